"""rtq.debug."""
