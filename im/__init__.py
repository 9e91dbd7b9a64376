"""im: a terminal-first incident platform that keeps incidents in sync with ITSM systems."""

__version__ = "0.1.0"
