"""edgeslm api layer."""
