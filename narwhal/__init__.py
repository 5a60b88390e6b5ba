"""Narwhal: a small, fast, self-hosted CI system."""

__version__ = "0.1.0"
