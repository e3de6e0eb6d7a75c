"""Phase 1: the KV-cache block manager (PagedAttention's memory manager), in Rust with a Python reference.

    from common import artifacts
    Manager = artifacts.get("allocator.block_table")      # Rust (kv_cache_manager)
    Manager = artifacts.get("allocator.block_table_ref")  # Python reference, same API
"""
