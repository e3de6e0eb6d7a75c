"""phase5_quant: not built yet (see its issue)."""
