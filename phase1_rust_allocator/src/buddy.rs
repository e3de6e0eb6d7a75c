//! Buddy allocator: contiguous runs of 2^k blocks, split on allocate, merged with their buddy on free.
//!
//! NOTE (design): a run of order k starting at `s` (s a multiple of 2^k) has its buddy at `s ^ 2^k`; when both are
//! free they merge into the run of order k+1 at `min(s, buddy)`. Each order keeps its free runs in an ordered set
//! and allocation takes the lowest address of the smallest order that fits, so the outcome is deterministic (the
//! Python reference makes the same choices). A request of n blocks gets 2^ceil(log2 n): up to ~50% internal
//! fragmentation, and free memory split into runs too small for a request is external fragmentation. That is
//! what PagedAttention's fixed-size blocks avoid: they never need contiguity, so neither kind arises beyond the
//! last, partly filled block of each sequence.

use std::collections::BTreeSet;

use crate::error::{zeroed_vec, AllocError, Result};

const NOT_A_START: u8 = 0; // alloc_order holds order + 1 where an allocation starts (zeroed: lazily mapped)

#[derive(Debug, Clone)]
pub struct BuddyAllocator {
    num_blocks: usize,
    max_order: usize,
    free_lists: Vec<BTreeSet<u32>>, // free_lists[k]: starts of free runs of 2^k blocks
    alloc_order: Vec<u8>,           // 1 + the order of the allocation starting at a block, or NOT_A_START
    num_free: usize,
    num_allocations: usize,
}

/// Smallest k with 2^k >= n (n >= 1).
pub fn order_for(n: usize) -> usize {
    (usize::BITS - (n - 1).leading_zeros()) as usize
}

impl BuddyAllocator {
    pub fn new(num_blocks: usize) -> Result<Self> {
        if num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(AllocError::InvalidArgument(format!("num_blocks must be in 1..=2^32-1, got {num_blocks}")));
        }
        let max_order = (usize::BITS - 1 - num_blocks.leading_zeros()) as usize; // floor(log2 N)
        let mut free_lists = vec![BTreeSet::new(); max_order + 1];
        // Cover 0..N with maximal aligned power-of-two runs (N need not be a power of two).
        let mut start = 0usize;
        while start < num_blocks {
            let mut k = max_order;
            while start % (1 << k) != 0 || start + (1 << k) > num_blocks {
                k -= 1;
            }
            free_lists[k].insert(start as u32);
            start += 1 << k;
        }
        let alloc_order = zeroed_vec(num_blocks, &format!("BuddyAllocator(num_blocks={num_blocks}) allocation orders"))?;
        Ok(Self { num_blocks, max_order, free_lists, alloc_order, num_free: num_blocks, num_allocations: 0 })
    }

    pub fn num_total_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }
    pub fn num_allocations(&self) -> usize {
        self.num_allocations
    }

    fn fitting_order(&self, order: usize) -> Option<usize> {
        (order..=self.max_order).find(|&k| !self.free_lists[k].is_empty())
    }

    pub fn can_allocate(&self, n: usize) -> bool {
        n >= 1 && n <= (1 << self.max_order) && self.fitting_order(order_for(n)).is_some()
    }

    /// A run of 2^ceil(log2 n) blocks; returns its first block.
    pub fn allocate(&mut self, n: usize) -> Result<u32> {
        if n == 0 {
            return Err(AllocError::InvalidArgument("allocate(n) needs n >= 1".into()));
        }
        let order = order_for(n);
        let k = if order <= self.max_order { self.fitting_order(order) } else { None };
        let mut k = k.ok_or(AllocError::OutOfBlocks { requested: 1 << order.min(63), free: self.num_free })?;
        let start = *self.free_lists[k].iter().next().unwrap(); // the lowest address of that order
        self.free_lists[k].remove(&start);
        while k > order {
            k -= 1;
            self.free_lists[k].insert(start + (1u32 << k)); // the upper half stays free
        }
        self.alloc_order[start as usize] = order as u8 + 1;
        self.num_free -= 1 << order;
        self.num_allocations += 1;
        Ok(start)
    }

    /// Free the run starting at `start`, merging with free buddies; returns the run's size in blocks.
    pub fn free(&mut self, start: i64) -> Result<usize> {
        if start < 0 || start as usize >= self.num_blocks {
            return Err(AllocError::InvalidBlock { block: start, reason: format!("block ids are 0..{}", self.num_blocks) });
        }
        let code = self.alloc_order[start as usize];
        if code == NOT_A_START {
            return Err(AllocError::DoubleFree { block: start });
        }
        let order = code - 1;
        self.alloc_order[start as usize] = NOT_A_START;
        let (mut s, mut k) = (start as u32, order as usize);
        while k < self.max_order && self.free_lists[k].remove(&(s ^ (1u32 << k))) {
            s &= !(1u32 << k);
            k += 1;
        }
        self.free_lists[k].insert(s);
        self.num_free += 1 << order;
        self.num_allocations -= 1;
        Ok(1 << order)
    }

    /// Size in blocks of the allocation starting at `start` (0 if none starts there).
    pub fn allocation_size(&self, start: i64) -> usize {
        if start < 0 || start as usize >= self.num_blocks || self.alloc_order[start as usize] == NOT_A_START {
            0
        } else {
            1 << (self.alloc_order[start as usize] - 1)
        }
    }

    pub fn largest_free_run(&self) -> usize {
        self.free_lists.iter().rposition(|l| !l.is_empty()).map_or(0, |k| 1 << k)
    }

    /// 1 - largest free run / free blocks: 0 when all free memory is one run, near 1 when it is shredded.
    pub fn external_fragmentation(&self) -> f64 {
        if self.num_free == 0 {
            0.0
        } else {
            1.0 - self.largest_free_run() as f64 / self.num_free as f64
        }
    }

    /// Free runs as (start, size), sorted by start.
    pub fn free_runs(&self) -> Vec<(u32, usize)> {
        let mut v: Vec<(u32, usize)> =
            self.free_lists.iter().enumerate().flat_map(|(k, l)| l.iter().map(move |&s| (s, 1usize << k))).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_merge() {
        let mut b = BuddyAllocator::new(16).unwrap();
        let a = b.allocate(3).unwrap(); // 4 blocks
        assert_eq!((a, b.allocation_size(a as i64)), (0, 4));
        let c = b.allocate(1).unwrap();
        assert_eq!(c, 4);
        assert_eq!(b.free_runs(), vec![(5, 1), (6, 2), (8, 8)]);
        b.free(a as i64).unwrap();
        b.free(c as i64).unwrap();
        assert_eq!(b.free_runs(), vec![(0, 16)]);
        assert_eq!(b.num_free_blocks(), 16);
    }

    #[test]
    fn non_power_of_two_and_errors() {
        let mut b = BuddyAllocator::new(13).unwrap();
        assert_eq!(b.free_runs(), vec![(0, 8), (8, 4), (12, 1)]);
        assert!(matches!(b.allocate(16), Err(AllocError::OutOfBlocks { .. })));
        let s = b.allocate(8).unwrap();
        assert!(!b.can_allocate(8));
        assert!(matches!(b.free(s as i64 + 1), Err(AllocError::DoubleFree { .. })));
        b.free(s as i64).unwrap();
        assert!(matches!(b.free(s as i64), Err(AllocError::DoubleFree { .. })));
        assert_eq!(b.free_runs(), vec![(0, 8), (8, 4), (12, 1)]);
    }

    #[test]
    fn external_fragmentation_measures_shredding() {
        let mut b = BuddyAllocator::new(8).unwrap();
        let runs: Vec<u32> = (0..8).map(|_| b.allocate(1).unwrap()).collect();
        for s in runs.iter().step_by(2) {
            b.free(*s as i64).unwrap(); // free every other block: 4 free, largest run 1
        }
        assert!((b.external_fragmentation() - 0.75).abs() < 1e-12);
        assert!(!b.can_allocate(2));
    }

    #[test]
    fn order_for_rounds_up() {
        assert_eq!((order_for(1), order_for(2), order_for(3), order_for(4), order_for(5)), (0, 1, 2, 2, 3));
    }
}
