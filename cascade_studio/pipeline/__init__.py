"""Torch-side engine: checkpoint loading, conditioning, sampling (no Qt here)."""
