"""``python -m darb``: the same as the ``darb`` command."""

import sys

from darb.cli import main

sys.exit(main())
