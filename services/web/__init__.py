"""The darb web UI (``python -m services.web``): pages over the control plane's gRPC API."""
