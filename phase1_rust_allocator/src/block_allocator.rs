//! Fixed-size block allocator: O(1) allocate/free over a free stack, with reference counts for sharing.
//!
//! NOTE (design): the free list is a LIFO stack of block ids, so allocate and free are one push/pop each, and a
//! block freed a moment ago (still warm in caches, on the GPU still resident in L2) is the next one handed out.
//! Reference counts live in a flat `Vec<u32>` indexed by block id: 0 means free. Sharing (prefix sharing, fork)
//! is an `incref`; `free` is a decref that returns the block to the stack only when the count reaches 0.
//! Batch operations (`allocate_n`, `free_n`) are all-or-nothing, so one FFI call covers a whole scheduler step and a
//! failing call changes nothing.
//!
//! NOTE (lazy pool): the stack starts empty, with a watermark `fresh`: blocks `fresh..N` were never handed out, and
//! an allocation pops the stack first, then takes `fresh`. That hands out exactly the ids a full stack pushed as
//! N-1, ..., 0 would (0, 1, 2, ..., a freed block first), but construction is O(1) and the refcounts come from a
//! zeroed allocation whose pages the OS maps as they are first written: `BlockAllocator(2**32 - 1)` used to write
//! 32 GiB up front (free stack + counts) and was killed; now it costs what is used, or is a clean error where the
//! system refuses the allocation.

use crate::error::{zeroed_vec, AllocError, Result};

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    refcounts: Vec<u32>,
    free_stack: Vec<u32>, // freed blocks, the last freed on top
    fresh: usize,         // blocks fresh..N have never been handed out (NOTE on the lazy pool)
}

impl BlockAllocator {
    /// `num_blocks` blocks of `block_size` token slots each; block ids are `0..num_blocks`.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(AllocError::InvalidArgument(format!(
                "num_blocks must be in 1..=2^32-1, got {num_blocks}"
            )));
        }
        if block_size == 0 {
            return Err(AllocError::InvalidArgument("block_size must be >= 1, got 0".into()));
        }
        let refcounts = zeroed_vec(num_blocks, &format!("BlockAllocator(num_blocks={num_blocks}) reference counts"))?;
        Ok(Self { block_size, refcounts, free_stack: Vec::new(), fresh: 0 })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_total_blocks(&self) -> usize {
        self.refcounts.len()
    }
    pub fn num_free_blocks(&self) -> usize {
        self.free_stack.len() + (self.refcounts.len() - self.fresh)
    }
    pub fn can_allocate(&self, n: usize) -> bool {
        n <= self.num_free_blocks()
    }
    pub fn refcounts(&self) -> &[u32] {
        &self.refcounts
    }

    fn index(&self, block: i64) -> Result<usize> {
        if block < 0 || block as usize >= self.refcounts.len() {
            return Err(AllocError::InvalidBlock {
                block,
                reason: format!("block ids are 0..{}", self.refcounts.len()),
            });
        }
        Ok(block as usize)
    }

    /// The next free id (the stack's top, else the watermark); the caller checked that one is free.
    fn take(&mut self) -> u32 {
        let b = self.free_stack.pop().unwrap_or_else(|| {
            self.fresh += 1;
            (self.fresh - 1) as u32
        });
        self.refcounts[b as usize] = 1;
        b
    }

    /// One block with reference count 1.
    pub fn allocate(&mut self) -> Result<u32> {
        if self.num_free_blocks() == 0 {
            return Err(AllocError::OutOfBlocks { requested: 1, free: 0 });
        }
        Ok(self.take())
    }

    /// `n` blocks, appended to `out`; all or nothing.
    pub fn allocate_into(&mut self, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let free = self.num_free_blocks();
        if n > free {
            return Err(AllocError::OutOfBlocks { requested: n, free });
        }
        out.reserve(n);
        for _ in 0..n {
            let b = self.take();
            out.push(b);
        }
        Ok(())
    }

    pub fn allocate_n(&mut self, n: usize) -> Result<Vec<u32>> {
        // no with_capacity(n) here: allocate_into reserves after its check (allocate_n(2**36) aborted the process)
        let mut out = Vec::new();
        self.allocate_into(n, &mut out)?;
        Ok(out)
    }

    /// Drop one reference; returns true when the block went back to the free stack.
    pub fn free(&mut self, block: i64) -> Result<bool> {
        let i = self.index(block)?;
        match self.refcounts[i] {
            0 => Err(AllocError::DoubleFree { block }),
            1 => {
                self.refcounts[i] = 0;
                self.free_stack.push(i as u32);
                Ok(true)
            }
            _ => {
                self.refcounts[i] -= 1;
                Ok(false)
            }
        }
    }

    /// Drop one reference per listed id (an id may repeat); all or nothing. Returns how many blocks became free.
    pub fn free_n<I: Copy + Into<i64>>(&mut self, ids: &[I]) -> Result<usize> {
        let mut to_free: Vec<u32> = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let block = id.into();
            let checked = self.index(block).and_then(|i| {
                if self.refcounts[i] == 0 { Err(AllocError::DoubleFree { block }) } else { Ok(i) }
            });
            match checked {
                Ok(i) => {
                    self.refcounts[i] -= 1;
                    if self.refcounts[i] == 0 {
                        to_free.push(i as u32);
                    }
                }
                Err(e) => {
                    for &done in &ids[..k] {
                        self.refcounts[done.into() as usize] += 1; // roll back: nothing changes on error
                    }
                    return Err(e);
                }
            }
        }
        let n = to_free.len();
        self.free_stack.extend(to_free);
        Ok(n)
    }

    /// Add a reference to an allocated block (share it); returns the new count.
    pub fn incref(&mut self, block: i64) -> Result<u32> {
        let i = self.index(block)?;
        if self.refcounts[i] == 0 {
            return Err(AllocError::InvalidBlock { block, reason: "it is free; incref needs an allocated block".into() });
        }
        self.refcounts[i] += 1;
        Ok(self.refcounts[i])
    }

    pub fn refcount(&self, block: i64) -> Result<u32> {
        Ok(self.refcounts[self.index(block)?])
    }

    pub fn num_shared_blocks(&self) -> usize {
        self.refcounts.iter().filter(|&&c| c > 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_free_roundtrip() {
        let mut a = BlockAllocator::new(4, 16).unwrap();
        assert_eq!(a.allocate().unwrap(), 0);
        assert_eq!(a.allocate_n(2).unwrap(), vec![1, 2]);
        assert_eq!(a.num_free_blocks(), 1);
        assert!(a.free(1).unwrap());
        assert_eq!(a.allocate().unwrap(), 1, "LIFO: the block just freed comes back first");
    }

    #[test]
    fn lazy_pool_hands_out_the_full_stack_order() {
        // the ids a stack pre-filled with N-1..0 would give: fresh ids in order, a freed one first
        let mut a = BlockAllocator::new(6, 16).unwrap();
        assert_eq!(a.allocate_n(3).unwrap(), vec![0, 1, 2]);
        a.free_n(&[1i64, 0]).unwrap();
        assert_eq!(a.num_free_blocks(), 5);
        assert_eq!(a.allocate_n(4).unwrap(), vec![0, 1, 3, 4]);
        assert_eq!(a.allocate().unwrap(), 5);
        assert_eq!(a.allocate(), Err(AllocError::OutOfBlocks { requested: 1, free: 0 }));
    }

    #[test]
    fn the_largest_pool_costs_only_what_is_used() {
        // 2^32 - 1 blocks: 16 GiB of counts, mapped lazily (or refused cleanly where the system has no overcommit)
        match BlockAllocator::new(u32::MAX as usize, 16) {
            Ok(mut a) => {
                assert_eq!(a.num_free_blocks(), u32::MAX as usize);
                assert_eq!(a.allocate_n(3).unwrap(), vec![0, 1, 2]);
                assert!(a.free(1).unwrap());
                assert_eq!(a.allocate().unwrap(), 1);
                assert_eq!(a.num_free_blocks(), u32::MAX as usize - 3);
            }
            Err(AllocError::InvalidArgument(msg)) => assert!(msg.contains("could not be allocated"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn out_of_blocks_is_all_or_nothing() {
        let mut a = BlockAllocator::new(3, 16).unwrap();
        a.allocate().unwrap();
        assert_eq!(a.allocate_n(3), Err(AllocError::OutOfBlocks { requested: 3, free: 2 }));
        assert_eq!(a.num_free_blocks(), 2);
    }

    #[test]
    fn double_free_and_bad_ids() {
        let mut a = BlockAllocator::new(2, 16).unwrap();
        let b = a.allocate().unwrap() as i64;
        a.free(b).unwrap();
        assert_eq!(a.free(b), Err(AllocError::DoubleFree { block: b }));
        assert!(matches!(a.free(7), Err(AllocError::InvalidBlock { .. })));
        assert!(matches!(a.free(-1), Err(AllocError::InvalidBlock { .. })));
        assert!(matches!(a.incref(b), Err(AllocError::InvalidBlock { .. })));
    }

    #[test]
    fn refcounts_share_and_free_n_rolls_back() {
        let mut a = BlockAllocator::new(4, 16).unwrap();
        let v = a.allocate_n(2).unwrap();
        assert_eq!(a.incref(v[0] as i64).unwrap(), 2);
        // v[1] listed twice but held once: the whole call fails and nothing changes
        assert!(matches!(a.free_n(&[v[0] as i64, v[1] as i64, v[1] as i64]), Err(AllocError::DoubleFree { .. })));
        assert_eq!(a.refcounts(), &[2, 1, 0, 0]);
        assert_eq!(a.free_n(&[v[0] as i64, v[0] as i64, v[1] as i64]).unwrap(), 2);
        assert_eq!(a.num_free_blocks(), 4);
    }
}
