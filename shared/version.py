"""darb's version, reported by the agent and the control plane."""

__version__ = "0.1.0"
