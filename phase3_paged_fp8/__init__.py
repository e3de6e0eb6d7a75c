"""phase3_paged_fp8: not built yet (see its issue)."""
