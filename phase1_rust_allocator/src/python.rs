//! PyO3 bindings: `kv_cache_manager.BlockAllocator`, `.BuddyAllocator`, `.BlockTableManager`.
//!
//! NOTE (design): errors are raised as the exception classes defined in Python in `phase1_rust_allocator.errors`
//! (looked up when an error happens, which is rare), so `except OutOfBlocksError` catches the Rust and the Python
//! implementation alike. If that module cannot be imported (the wheel used outside the repository) the error is a
//! RuntimeError carrying the class name. No call panics across the FFI: every failure is a `Result`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::block_allocator::BlockAllocator;
use crate::block_table::BlockTableManager;
use crate::buddy::BuddyAllocator;
use crate::error::{check_count, AllocError};

const ERRORS_MODULE: &str = "phase1_rust_allocator.errors";

impl From<AllocError> for PyErr {
    fn from(e: AllocError) -> PyErr {
        Python::with_gil(|py| {
            let cls = py.import(ERRORS_MODULE).and_then(|m| m.getattr(e.class_name()));
            match cls.ok().and_then(|c| c.downcast::<PyType>().ok()) {
                Some(t) => PyErr::from_type(t, e.to_string()),
                None => PyRuntimeError::new_err(format!("{}: {}", e.class_name(), e)),
            }
        })
    }
}

fn counts(name: &str, ns: &[i64]) -> Result<Vec<usize>, AllocError> {
    ns.iter().map(|&n| check_count(name, n)).collect()
}

#[pyclass(name = "BlockAllocator", module = "kv_cache_manager")]
pub struct PyBlockAllocator {
    inner: BlockAllocator,
}

#[pymethods]
impl PyBlockAllocator {
    #[new]
    #[args(block_size = "16")]
    fn new(num_blocks: i64, block_size: i64) -> PyResult<Self> {
        let nb = check_count("num_blocks", num_blocks)?;
        let bs = check_count("block_size", block_size)?;
        Ok(Self { inner: BlockAllocator::new(nb, bs)? })
    }
    #[getter]
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    #[getter]
    fn num_total_blocks(&self) -> usize {
        self.inner.num_total_blocks()
    }
    #[getter]
    fn num_free_blocks(&self) -> usize {
        self.inner.num_free_blocks()
    }
    #[getter]
    fn num_used_blocks(&self) -> usize {
        self.inner.num_total_blocks() - self.inner.num_free_blocks()
    }
    fn can_allocate(&self, n: i64) -> PyResult<bool> {
        Ok(self.inner.can_allocate(check_count("n", n)?))
    }
    fn allocate(&mut self) -> PyResult<u32> {
        Ok(self.inner.allocate()?)
    }
    fn allocate_n(&mut self, n: i64) -> PyResult<Vec<u32>> {
        Ok(self.inner.allocate_n(check_count("n", n)?)?)
    }
    fn free(&mut self, block: i64) -> PyResult<bool> {
        Ok(self.inner.free(block)?)
    }
    fn free_n(&mut self, ids: Vec<i64>) -> PyResult<usize> {
        Ok(self.inner.free_n(&ids)?)
    }
    fn incref(&mut self, block: i64) -> PyResult<u32> {
        Ok(self.inner.incref(block)?)
    }
    fn refcount(&self, block: i64) -> PyResult<u32> {
        Ok(self.inner.refcount(block)?)
    }
    fn refcounts(&self) -> Vec<u32> {
        self.inner.refcounts().to_vec()
    }
    fn __repr__(&self) -> String {
        format!(
            "BlockAllocator[rust](num_blocks={}, block_size={}, free={}, shared={})",
            self.inner.num_total_blocks(), self.inner.block_size(), self.inner.num_free_blocks(), self.inner.num_shared_blocks()
        )
    }
}

#[pyclass(name = "BuddyAllocator", module = "kv_cache_manager")]
pub struct PyBuddyAllocator {
    inner: BuddyAllocator,
}

#[pymethods]
impl PyBuddyAllocator {
    #[new]
    fn new(num_blocks: i64) -> PyResult<Self> {
        Ok(Self { inner: BuddyAllocator::new(check_count("num_blocks", num_blocks)?)? })
    }
    #[getter]
    fn num_total_blocks(&self) -> usize {
        self.inner.num_total_blocks()
    }
    #[getter]
    fn num_free_blocks(&self) -> usize {
        self.inner.num_free_blocks()
    }
    #[getter]
    fn num_allocations(&self) -> usize {
        self.inner.num_allocations()
    }
    fn can_allocate(&self, n: i64) -> PyResult<bool> {
        Ok(self.inner.can_allocate(check_count("n", n)?))
    }
    fn allocate(&mut self, n: i64) -> PyResult<u32> {
        Ok(self.inner.allocate(check_count("n", n)?)?)
    }
    fn free(&mut self, start: i64) -> PyResult<usize> {
        Ok(self.inner.free(start)?)
    }
    fn allocation_size(&self, start: i64) -> usize {
        self.inner.allocation_size(start)
    }
    fn largest_free_run(&self) -> usize {
        self.inner.largest_free_run()
    }
    fn external_fragmentation(&self) -> f64 {
        self.inner.external_fragmentation()
    }
    fn free_runs(&self) -> Vec<(u32, usize)> {
        self.inner.free_runs()
    }
    fn __repr__(&self) -> String {
        format!(
            "BuddyAllocator[rust](num_blocks={}, free={}, allocations={}, largest_free_run={})",
            self.inner.num_total_blocks(), self.inner.num_free_blocks(), self.inner.num_allocations(), self.inner.largest_free_run()
        )
    }
}

#[pyclass(name = "BlockTableManager", module = "kv_cache_manager")]
pub struct PyBlockTableManager {
    inner: BlockTableManager,
}

#[pymethods]
impl PyBlockTableManager {
    #[new]
    #[args(block_size = "16")]
    fn new(num_blocks: i64, block_size: i64) -> PyResult<Self> {
        let nb = check_count("num_blocks", num_blocks)?;
        let bs = check_count("block_size", block_size)?;
        Ok(Self { inner: BlockTableManager::new(nb, bs)? })
    }
    #[getter]
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    #[getter]
    fn num_total_blocks(&self) -> usize {
        self.inner.allocator().num_total_blocks()
    }
    #[getter]
    fn num_free_blocks(&self) -> usize {
        self.inner.allocator().num_free_blocks()
    }
    #[getter]
    fn num_sequences(&self) -> usize {
        self.inner.num_sequences()
    }
    fn has_sequence(&self, seq_id: i64) -> bool {
        self.inner.has_sequence(seq_id)
    }
    fn seq_ids(&self) -> Vec<i64> {
        self.inner.seq_ids()
    }
    fn add_sequence(&mut self, seq_id: i64) -> PyResult<()> {
        Ok(self.inner.add_sequence(seq_id)?)
    }
    fn num_blocks_needed(&self, seq_id: i64, n: i64) -> PyResult<usize> {
        Ok(self.inner.num_blocks_needed(seq_id, check_count("n", n)?)?)
    }
    fn can_append(&self, seq_id: i64, n: i64) -> PyResult<bool> {
        Ok(self.inner.can_append(seq_id, check_count("n", n)?)?)
    }
    fn append_tokens(&mut self, seq_id: i64, n: i64) -> PyResult<Vec<(u32, u32)>> {
        Ok(self.inner.append_tokens(seq_id, check_count("n", n)?)?)
    }
    fn append_tokens_batch(&mut self, seq_ids: Vec<i64>, num_new_tokens: Vec<i64>) -> PyResult<(Vec<i64>, Vec<(u32, u32)>)> {
        let ns = counts("num_new_tokens", &num_new_tokens)?;
        let (mut slots, mut copies) = (Vec::new(), Vec::new());
        self.inner.append_tokens_batch(&seq_ids, &ns, &mut slots, &mut copies)?;
        Ok((slots, copies))
    }
    #[args(num_new_tokens = "None")]
    fn slot_mapping(&self, seq_ids: Vec<i64>, num_new_tokens: Option<Vec<i64>>) -> PyResult<Vec<i64>> {
        let ns = match num_new_tokens {
            Some(v) => counts("num_new_tokens", &v)?,
            None => vec![1; seq_ids.len()],
        };
        let mut slots = Vec::new();
        self.inner.slot_mapping_into(&seq_ids, &ns, &mut slots)?;
        Ok(slots)
    }
    fn block_table(&self, seq_id: i64) -> PyResult<Vec<u32>> {
        Ok(self.inner.block_table(seq_id)?.to_vec())
    }
    fn block_tables(&self, seq_ids: Vec<i64>) -> PyResult<Vec<Vec<u32>>> {
        seq_ids.iter().map(|&id| Ok(self.inner.block_table(id)?.to_vec())).collect()
    }
    fn num_tokens(&self, seq_id: i64) -> PyResult<usize> {
        Ok(self.inner.num_tokens(seq_id)?)
    }
    fn fork(&mut self, parent: i64, child: i64) -> PyResult<()> {
        Ok(self.inner.fork(parent, child)?)
    }
    fn free_sequence(&mut self, seq_id: i64) -> PyResult<usize> {
        Ok(self.inner.free_sequence(seq_id)?)
    }
    fn refcount(&self, block: i64) -> PyResult<u32> {
        Ok(self.inner.allocator().refcount(block)?)
    }
    fn refcounts(&self) -> Vec<u32> {
        self.inner.allocator().refcounts().to_vec()
    }
    fn __repr__(&self) -> String {
        let a = self.inner.allocator();
        format!(
            "BlockTableManager[rust](sequences={}, num_blocks={}, block_size={}, free={})",
            self.inner.num_sequences(), a.num_total_blocks(), a.block_size(), a.num_free_blocks()
        )
    }
}

#[pymodule]
fn kv_cache_manager(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add_class::<PyBlockAllocator>()?;
    m.add_class::<PyBuddyAllocator>()?;
    m.add_class::<PyBlockTableManager>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ERRORS_MODULE", ERRORS_MODULE)?;
    Ok(())
}
