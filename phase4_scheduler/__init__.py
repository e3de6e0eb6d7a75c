"""phase4_scheduler: not built yet (see its issue)."""
