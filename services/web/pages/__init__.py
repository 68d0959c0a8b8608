"""The web UI's pages, one module a family: ``auth`` (sign-in and out), ``environments``
(the list, the new-environment form, an environment's page), its ``history`` and
``sharing`` tabs, ``jobs`` (with the live event stream), ``groups`` and ``users``
(administrators'); ``common`` holds what they share."""
