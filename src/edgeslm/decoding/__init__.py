"""edgeslm decoding layer."""
