"""rtq.compare."""
