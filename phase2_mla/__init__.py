"""phase2_mla: not built yet (see its issue)."""
