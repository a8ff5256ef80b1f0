//! Which offsets may be committed when messages finish out of order (one
//! channel throttled, another not): per partition, everything below the
//! lowest unfinished message.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct PartitionOffsets {
    unfinished: BTreeSet<i64>,
    /// One past the highest offset started.
    next: i64,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

impl OffsetTracker {
    pub fn started(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.unfinished.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Marks a message done; returns the partition's committable offset
    /// (the next offset to read) if it moved.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let before = Self::committable_of(p);
        p.unfinished.remove(&offset);
        let after = Self::committable_of(p);
        (after != before).then_some(after)
    }

    fn committable_of(p: &PartitionOffsets) -> i64 {
        p.unfinished.first().copied().unwrap_or(p.next)
    }

    pub fn unfinished(&self) -> usize {
        self.partitions.values().map(|p| p.unfinished.len()).sum()
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Forgets partitions this consumer no longer owns.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_lowest_unfinished_message() {
        let mut t = OffsetTracker::default();
        for o in 10..14 {
            t.started(0, o);
        }
        t.started(1, 5);
        assert_eq!(t.finished(0, 12), None, "10 and 11 still running");
        assert_eq!(t.finished(0, 10), Some(11));
        assert_eq!(t.finished(0, 11), Some(13));
        assert_eq!(t.finished(0, 13), Some(14));
        assert_eq!(t.finished(1, 5), Some(6));
        assert_eq!(t.unfinished(), 0);
        assert_eq!(t.finished(7, 1), None, "unknown partition");
    }
}
