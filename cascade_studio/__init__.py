"""Cascade Studio: a desktop studio for Stable Cascade."""

__version__ = "0.1.0"
