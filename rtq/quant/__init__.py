"""rtq.quant."""
