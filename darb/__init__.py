"""darb: the Python SDK and CLI for the darb service."""
