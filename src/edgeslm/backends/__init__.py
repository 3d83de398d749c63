"""edgeslm backends layer."""
