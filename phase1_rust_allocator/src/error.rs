//! Typed errors of the block manager. Every fallible operation returns `Result<_, AllocError>` and leaves the
//! state exactly as it was when it fails; the Python binding turns each variant into the exception class of the
//! same name from `phase1_rust_allocator.errors`, so Rust and the Python reference raise the very same classes.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Not enough free blocks (or, for the buddy allocator, no free run large enough).
    OutOfBlocks { requested: usize, free: usize },
    /// `free` of a block whose reference count is already zero.
    DoubleFree { block: i64 },
    /// A block id outside `0..num_blocks`, or `incref` of a free block.
    InvalidBlock { block: i64, reason: String },
    /// A sequence id the manager does not know.
    UnknownSequence { seq_id: i64 },
    /// `add_sequence`/`fork` with an id already in use.
    DuplicateSequence { seq_id: i64 },
    /// Any other bad argument (negative count, mismatched lengths, ...).
    InvalidArgument(String),
}

impl AllocError {
    /// The name of the Python exception class this error becomes.
    pub fn class_name(&self) -> &'static str {
        match self {
            AllocError::OutOfBlocks { .. } => "OutOfBlocksError",
            AllocError::DoubleFree { .. } => "DoubleFreeError",
            AllocError::InvalidBlock { .. } => "InvalidBlockError",
            AllocError::UnknownSequence { .. } => "UnknownSequenceError",
            AllocError::DuplicateSequence { .. } => "DuplicateSequenceError",
            AllocError::InvalidArgument(_) => "InvalidArgumentError",
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::OutOfBlocks { requested, free } => write!(
                f,
                "out of KV-cache blocks: need {requested}, {free} free; free a sequence (preempt) or give the cache more blocks"
            ),
            AllocError::DoubleFree { block } => {
                write!(f, "double free of block {block}: its reference count is already 0")
            }
            AllocError::InvalidBlock { block, reason } => write!(f, "invalid block {block}: {reason}"),
            AllocError::UnknownSequence { seq_id } => {
                write!(f, "unknown sequence {seq_id}: call add_sequence({seq_id}) first (or it was freed)")
            }
            AllocError::DuplicateSequence { seq_id } => {
                write!(f, "sequence {seq_id} already exists: free_sequence({seq_id}) first or pick a new id")
            }
            AllocError::InvalidArgument(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for AllocError {}

pub type Result<T> = std::result::Result<T, AllocError>;

/// A count argument from Python: must be >= 0.
pub fn check_count(name: &str, n: i64) -> Result<usize> {
    if n < 0 {
        return Err(AllocError::InvalidArgument(format!("{name} must be >= 0, got {n}")));
    }
    Ok(n as usize)
}

/// Types whose all-zero bit pattern is the value 0 (so a zeroed allocation is a valid `Vec` of zeros).
///
/// # Safety
/// Implement only for plain integers.
pub unsafe trait ZeroBits: Copy {}
unsafe impl ZeroBits for u8 {}
unsafe impl ZeroBits for u32 {}

/// `n` zeros in one zeroed allocation (calloc: the OS maps the pages lazily, as they are first written, so a huge
/// pool of which little is used costs little memory), and an allocation the system refuses is an
/// `InvalidArgument` error naming `what`, not an abort (`vec![0; n]` aborts the process, Python included).
pub fn zeroed_vec<T: ZeroBits>(n: usize, what: &str) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let fail = || {
        AllocError::InvalidArgument(format!(
            "{what}: {n} entries ({} bytes of host memory) could not be allocated",
            n.saturating_mul(std::mem::size_of::<T>())
        ))
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| fail())?;
    // SAFETY: layout has a non-zero size (n >= 1, T is an integer); a null pointer is handled below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: allocated by the global allocator with exactly Vec<T>'s layout for capacity n; all-zero bytes are n
    // valid values of T (ZeroBits).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}
