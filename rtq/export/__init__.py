"""rtq.export."""
