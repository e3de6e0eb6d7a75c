"""phase7_speculative: not built yet (see its issue)."""
