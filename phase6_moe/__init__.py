"""phase6_moe: not built yet (see its issue)."""
