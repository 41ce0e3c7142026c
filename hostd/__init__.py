"""hostd: a self-hosted, content-addressed file host."""

__version__ = "0.1.0"
