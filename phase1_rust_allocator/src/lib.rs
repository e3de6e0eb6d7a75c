//! kv_cache_manager: the KV-cache block manager of TitanInfer (phase 1).
//!
//! - `block_allocator`: fixed-size blocks, O(1) allocate/free, reference counts (sharing, copy-on-write).
//! - `buddy`: contiguous power-of-two runs with split and merge (the comparison point).
//! - `block_table`: per-sequence logical -> physical block tables, slot mappings, fork, free.
//!
//! The core is plain Rust (`cargo test` needs no Python); `python` (the `extension-module` feature, which maturin
//! turns on) adds the PyO3 bindings in `python.rs`.

pub mod block_allocator;
pub mod block_table;
pub mod buddy;
pub mod error;

#[cfg(feature = "python")]
mod python;

pub use block_allocator::BlockAllocator;
pub use block_table::BlockTableManager;
pub use buddy::BuddyAllocator;
pub use error::AllocError;
