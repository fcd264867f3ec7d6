"""The application's only threads: the GPU worker and background I/O (thumbnails, downloads)."""
