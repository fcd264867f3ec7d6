"""Plain-Python domain layer: requests, geometry, metadata (no torch, no Qt)."""
