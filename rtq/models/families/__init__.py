"""The detector families rtq knows (registered by name in `rtq.models.family.FAMILIES`)."""
