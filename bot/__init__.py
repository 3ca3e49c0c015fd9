"""tsunagu ("to connect"): anonymous first-contact chatbot for municipal support windows."""

__version__ = "0.1.0"
