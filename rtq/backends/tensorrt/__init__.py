"""rtq.backends.tensorrt."""
