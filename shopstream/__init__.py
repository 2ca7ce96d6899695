"""shopstream: a real-time AI event processor for online shops and ad platforms."""

__version__ = "0.1.0"
