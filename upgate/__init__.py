"""upgate: the gate every upgrade of an AI system passes through."""

__version__ = "0.1.0"
