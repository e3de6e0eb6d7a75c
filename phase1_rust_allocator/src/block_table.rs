//! Per-sequence block tables: the logical -> physical map of PagedAttention, over a `BlockAllocator`.
//!
//! Token `p` of a sequence lives in physical slot `table[p / block_size] * block_size + p % block_size`.
//! NOTE (design): sharing is copy-on-write at block granularity. `fork` copies the parent's table and increfs
//! every block; the first append into a *partly filled, shared* last block allocates a private block and reports
//! the (src, dst) copy the engine must perform on the KV tensors before writing. Full shared blocks never need a
//! copy: new tokens go into new blocks. Every mutating call first computes how many blocks it needs and fails
//! with OutOfBlocks before touching anything, so the state is never half-updated.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::block_allocator::BlockAllocator;
use crate::error::{AllocError, Result};

#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub blocks: Vec<u32>,
    pub num_tokens: usize,
    batch_stamp: u64, // the last batch that named this sequence (finds duplicates without a set)
}

/// Sequence ids are small integers chosen by the scheduler, not attacker-controlled keys: a one-multiply hash
/// (Fibonacci hashing, as rustc's FxHash) is enough and several times cheaper than the default SipHash.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, x: i64) {
        self.0 = (x as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type SeqMap = HashMap<i64, Sequence, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone)]
pub struct BlockTableManager {
    alloc: BlockAllocator,
    seqs: SeqMap,
    batch_epoch: u64,
}

impl BlockTableManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        Ok(Self { alloc: BlockAllocator::new(num_blocks, block_size)?, seqs: SeqMap::default(), batch_epoch: 0 })
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }
    pub fn block_size(&self) -> usize {
        self.alloc.block_size()
    }
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }
    pub fn has_sequence(&self, seq_id: i64) -> bool {
        self.seqs.contains_key(&seq_id)
    }
    pub fn seq_ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.seqs.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn seq(&self, seq_id: i64) -> Result<&Sequence> {
        self.seqs.get(&seq_id).ok_or(AllocError::UnknownSequence { seq_id })
    }

    pub fn add_sequence(&mut self, seq_id: i64) -> Result<()> {
        if self.seqs.contains_key(&seq_id) {
            return Err(AllocError::DuplicateSequence { seq_id });
        }
        self.seqs.insert(seq_id, Sequence::default());
        Ok(())
    }

    /// Blocks an append of `n` tokens needs: new blocks past the table's end, plus one for a copy-on-write.
    fn blocks_needed(&self, s: &Sequence, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let bs = self.alloc.block_size();
        let grow = (s.num_tokens + n + bs - 1) / bs - s.blocks.len();
        let cow = s.num_tokens % bs != 0 && self.alloc.refcounts()[*s.blocks.last().unwrap() as usize] > 1;
        grow + cow as usize
    }

    pub fn num_blocks_needed(&self, seq_id: i64, n: usize) -> Result<usize> {
        Ok(self.blocks_needed(self.seq(seq_id)?, n))
    }

    pub fn can_append(&self, seq_id: i64, n: usize) -> Result<bool> {
        Ok(self.alloc.can_allocate(self.num_blocks_needed(seq_id, n)?))
    }

    /// Append `n` tokens to one sequence; pushes the copy-on-write (src, dst) pair, if any, to `copies`.
    fn append_unchecked(&mut self, seq_id: i64, n: usize, copies: &mut Vec<(u32, u32)>) {
        if n == 0 {
            return;
        }
        let bs = self.alloc.block_size();
        let s = self.seqs.get_mut(&seq_id).unwrap();
        if s.num_tokens % bs != 0 {
            let last = *s.blocks.last().unwrap();
            if self.alloc.refcounts()[last as usize] > 1 {
                let dst = self.alloc.allocate().expect("checked by the caller");
                self.alloc.free(last as i64).expect("shared block has refcount > 1");
                *s.blocks.last_mut().unwrap() = dst;
                copies.push((last, dst));
            }
        }
        let grow = (s.num_tokens + n + bs - 1) / bs - s.blocks.len();
        self.alloc.allocate_into(grow, &mut s.blocks).expect("checked by the caller");
        s.num_tokens += n;
    }

    /// Append `n` tokens; returns the copies to perform. All or nothing.
    pub fn append_tokens(&mut self, seq_id: i64, n: usize) -> Result<Vec<(u32, u32)>> {
        let need = self.num_blocks_needed(seq_id, n)?;
        if !self.alloc.can_allocate(need) {
            return Err(AllocError::OutOfBlocks { requested: need, free: self.alloc.num_free_blocks() });
        }
        let mut copies = Vec::new();
        self.append_unchecked(seq_id, n, &mut copies);
        Ok(copies)
    }

    /// One scheduler step: append `ns[i]` tokens to `seq_ids[i]` for every i (ids distinct), all or nothing.
    /// Writes the slot of every new token, in order, to `slots` and the copy-on-write pairs to `copies`.
    pub fn append_tokens_batch(&mut self, seq_ids: &[i64], ns: &[usize], slots: &mut Vec<i64>, copies: &mut Vec<(u32, u32)>) -> Result<()> {
        check_lengths(seq_ids, ns)?;
        let mut need = 0;
        for (&id, &n) in seq_ids.iter().zip(ns) {
            need += self.blocks_needed(self.seq(id)?, n);
        }
        self.batch_epoch += 1;
        for &id in seq_ids {
            let s = self.seqs.get_mut(&id).unwrap();
            if s.batch_stamp == self.batch_epoch {
                return Err(AllocError::InvalidArgument(format!("sequence {id} appears twice in one batch")));
            }
            s.batch_stamp = self.batch_epoch;
        }
        if !self.alloc.can_allocate(need) {
            return Err(AllocError::OutOfBlocks { requested: need, free: self.alloc.num_free_blocks() });
        }
        for (&id, &n) in seq_ids.iter().zip(ns) {
            self.append_unchecked(id, n, copies);
        }
        self.slot_mapping_into(seq_ids, ns, slots)
    }

    /// Slots of the last `ns[i]` tokens of each sequence, concatenated (the step's slot mapping).
    pub fn slot_mapping_into(&self, seq_ids: &[i64], ns: &[usize], slots: &mut Vec<i64>) -> Result<()> {
        check_lengths(seq_ids, ns)?;
        let bs = self.alloc.block_size();
        for (&id, &n) in seq_ids.iter().zip(ns) {
            let s = self.seq(id)?;
            if n > s.num_tokens {
                return Err(AllocError::InvalidArgument(format!(
                    "slot_mapping: sequence {id} has {} tokens, asked for the last {n}", s.num_tokens
                )));
            }
            slots.reserve(n); // after the check: reserving the unchecked sum of ns up front panicked on a huge n
            for p in s.num_tokens - n..s.num_tokens {
                slots.push((s.blocks[p / bs] as usize * bs + p % bs) as i64);
            }
        }
        Ok(())
    }

    pub fn block_table(&self, seq_id: i64) -> Result<&[u32]> {
        Ok(&self.seq(seq_id)?.blocks)
    }

    pub fn num_tokens(&self, seq_id: i64) -> Result<usize> {
        Ok(self.seq(seq_id)?.num_tokens)
    }

    /// `child` shares all of `parent`'s blocks (refcount +1 each) and its token count.
    pub fn fork(&mut self, parent: i64, child: i64) -> Result<()> {
        let p = self.seq(parent)?.clone();
        if self.seqs.contains_key(&child) {
            return Err(AllocError::DuplicateSequence { seq_id: child });
        }
        for &b in &p.blocks {
            self.alloc.incref(b as i64).expect("blocks of a live sequence are allocated");
        }
        self.seqs.insert(child, p);
        Ok(())
    }

    /// Drop the sequence and one reference to each of its blocks; returns how many blocks became free.
    pub fn free_sequence(&mut self, seq_id: i64) -> Result<usize> {
        let s = self.seqs.remove(&seq_id).ok_or(AllocError::UnknownSequence { seq_id })?;
        // Free from the end of the table: the last (hottest) block lands on top of the free stack.
        let rev: Vec<u32> = s.blocks.iter().rev().copied().collect();
        Ok(self.alloc.free_n(&rev).expect("blocks of a live sequence are allocated"))
    }
}

fn check_lengths<T>(seq_ids: &[i64], ns: &[T]) -> Result<()> {
    if seq_ids.len() != ns.len() {
        return Err(AllocError::InvalidArgument(format!(
            "seq_ids and num_new_tokens differ in length ({} vs {})", seq_ids.len(), ns.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_grows_table_and_slots() {
        let mut m = BlockTableManager::new(8, 4).unwrap();
        m.add_sequence(7).unwrap();
        assert!(m.append_tokens(7, 6).unwrap().is_empty());
        assert_eq!(m.block_table(7).unwrap(), &[0, 1]);
        let mut slots = Vec::new();
        m.slot_mapping_into(&[7], &[6], &mut slots).unwrap();
        assert_eq!(slots, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn fork_then_copy_on_write() {
        let mut m = BlockTableManager::new(8, 4).unwrap();
        m.add_sequence(1).unwrap();
        m.append_tokens(1, 6).unwrap(); // blocks [0, 1], block 1 half full
        m.fork(1, 2).unwrap();
        assert_eq!(m.allocator().refcounts()[..2], [2, 2]);
        let copies = m.append_tokens(2, 1).unwrap();
        assert_eq!(copies, vec![(1, 2)]);
        assert_eq!(m.block_table(2).unwrap(), &[0, 2]);
        assert_eq!(m.allocator().refcounts()[..3], [2, 1, 1]);
        // the parent's last block is now private again: no copy
        assert!(m.append_tokens(1, 1).unwrap().is_empty());
        assert_eq!(m.free_sequence(1).unwrap(), 1);
        assert_eq!(m.free_sequence(2).unwrap(), 2);
        assert_eq!(m.allocator().num_free_blocks(), 8);
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut m = BlockTableManager::new(3, 4).unwrap();
        for id in [1, 2] {
            m.add_sequence(id).unwrap();
            m.append_tokens(id, 4).unwrap();
        }
        let (mut slots, mut copies) = (Vec::new(), Vec::new());
        let err = m.append_tokens_batch(&[1, 2], &[1, 1], &mut slots, &mut copies).unwrap_err();
        assert_eq!(err, AllocError::OutOfBlocks { requested: 2, free: 1 });
        assert_eq!((m.num_tokens(1).unwrap(), m.num_tokens(2).unwrap(), m.allocator().num_free_blocks()), (4, 4, 1));
        assert!(matches!(m.append_tokens_batch(&[1, 1], &[0, 0], &mut slots, &mut copies), Err(AllocError::InvalidArgument(_))));
        m.append_tokens_batch(&[1], &[1], &mut slots, &mut copies).unwrap();
        assert_eq!(slots, vec![8]);
    }

    #[test]
    fn unknown_and_duplicate_sequences() {
        let mut m = BlockTableManager::new(2, 4).unwrap();
        assert_eq!(m.append_tokens(3, 1), Err(AllocError::UnknownSequence { seq_id: 3 }));
        m.add_sequence(3).unwrap();
        assert_eq!(m.add_sequence(3), Err(AllocError::DuplicateSequence { seq_id: 3 }));
        assert_eq!(m.fork(3, 3), Err(AllocError::DuplicateSequence { seq_id: 3 }));
        assert_eq!(m.free_sequence(4), Err(AllocError::UnknownSequence { seq_id: 4 }));
    }
}
