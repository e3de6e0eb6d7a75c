"""phase1_rust_allocator: not built yet (see its issue)."""
