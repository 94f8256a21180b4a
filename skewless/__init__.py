"""skewless: one feature definition for streaming serving and point-in-time training sets."""

__version__ = "0.1.0"
