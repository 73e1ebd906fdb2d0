"""rtq.surgery."""
