"""phase8_radix: not built yet (see its issue)."""
