//! A batch's records processed on every core with their outputs kept in
//! input order: the transaction is per batch, so records within one can be
//! rendered in any order as long as they are written in order.
//!
//! The helper threads are started once, with the processor, and kept: a
//! thread started per batch paid its start and wake-up on every batch
//! (batches of 1,000 on two workers scaled 1.34–1.89 ×, batches of 10,000
//! 1.93–1.96 ×; docs/PERFORMANCE.md). The records are taken in small
//! blocks from a shared counter rather than in one fixed share per worker:
//! an emitted record costs ~20 × a filtered one, and a worker that starts
//! late or is interrupted by another process then does fewer blocks
//! instead of holding the whole batch back.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon_core::{ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};

/// Below this many records per worker, a worker costs more than it saves.
pub const MIN_RECORDS_PER_WORKER: usize = 32;

/// Records a worker takes at a time: small enough that the workers finish
/// within ~0.1 ms of each other (16 emitted records are ~0.15 ms), large
/// enough that taking one (a shared counter, a result slot) is negligible.
pub const BLOCK_RECORDS: usize = 16;

/// How long the caller, out of blocks, waits awake for the helpers' last
/// ones before it sleeps: a block or two (16 emitted records are ~0.15 ms).
const AWAKE_WAIT: Duration = Duration::from_micros(500);

/// Counts a helper out when it stops, by return or by panic.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// How many workers `records` records are worth on `cores` cores.
pub fn workers_for(records: usize, cores: usize) -> usize {
    cores.min(records / MIN_RECORDS_PER_WORKER).max(1)
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start {helpers} enrich worker thread(s): {source}")]
pub struct WorkersError {
    helpers: usize,
    source: ThreadPoolBuildError,
}

/// `workers` threads for one batch at a time: the caller's and
/// `workers - 1` helpers kept for the life of the value.
pub struct Workers {
    workers: usize,
    /// The helpers; none with one worker.
    helpers: Option<ThreadPool>,
}

impl Workers {
    pub fn new(workers: usize) -> Result<Self, WorkersError> {
        let workers = workers.max(1);
        let helpers = workers - 1;
        let pool = if helpers == 0 {
            None
        } else {
            let pool = ThreadPoolBuilder::new()
                .num_threads(helpers)
                .thread_name(|i| format!("enrich-worker-{}", i + 1))
                .build()
                .map_err(|source| WorkersError { helpers, source })?;
            Some(pool)
        };
        Ok(Self {
            workers,
            helpers: pool,
        })
    }

    /// Threads a batch may use, the caller's included.
    pub fn count(&self) -> usize {
        self.workers
    }

    /// `f` of consecutive blocks of [`BLOCK_RECORDS`] items, the blocks
    /// taken in turn by the workers (the caller is one of them; a batch
    /// too small for more stays on it), results in input order. A panic in
    /// any worker is raised again here once the others have stopped; the
    /// helpers stay usable.
    pub fn map_blocks<T, R, F>(&self, items: &[T], f: F) -> Vec<R>
    where
        T: Sync,
        R: Send,
        F: Fn(&[T]) -> R + Sync,
    {
        let workers = workers_for(items.len(), self.workers);
        self.map_in_blocks(items, workers, BLOCK_RECORDS, f)
    }

    fn map_in_blocks<T, R, F>(&self, items: &[T], workers: usize, block: usize, f: F) -> Vec<R>
    where
        T: Sync,
        R: Send,
        F: Fn(&[T]) -> R + Sync,
    {
        let pool = match &self.helpers {
            Some(pool) if workers > 1 && items.len() > block => pool,
            _ => return vec![f(items)],
        };
        let blocks: Vec<&[T]> = items.chunks(block.max(1)).collect();
        let next = AtomicUsize::new(0);
        let take_blocks = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(block) = blocks.get(i) else {
                    return done;
                };
                done.push((i, f(block)));
            }
        };
        let helped: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
        let helpers = workers.min(blocks.len()) - 1;
        let finished = AtomicUsize::new(0);
        let mine = pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| {
                    let _finished = Finished(&finished);
                    let done = take_blocks();
                    // Poisoned only by a panic elsewhere, which the scope
                    // raises in the caller anyway.
                    if let Ok(mut helped) = helped.lock() {
                        helped.extend(done);
                    }
                });
            }
            let mine = take_blocks();
            // The scope's own wait puts this thread to sleep, and waking it
            // takes ~50–130 µs on this machine's idle core, about a block's
            // work: the helpers' last blocks are waited for awake instead,
            // for a bounded time in case a helper has lost its core.
            let awake_until = Instant::now() + AWAKE_WAIT;
            while finished.load(Ordering::Acquire) < helpers && Instant::now() < awake_until {
                std::hint::spin_loop();
            }
            mine
        });
        let helped = helped.into_inner().unwrap_or_else(|e| e.into_inner());
        // Every block was taken exactly once (the scope returns after all
        // workers): back in block order.
        let mut results: Vec<(usize, R)> = mine.into_iter().chain(helped).collect();
        results.sort_unstable_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn flat(blocks: &[Vec<u32>]) -> Vec<u32> {
        blocks.iter().flatten().copied().collect()
    }

    #[test]
    fn blocks_come_back_in_input_order_and_cover_every_item() {
        let items: Vec<u32> = (0..1001).collect();
        for workers in [1, 2, 3, 7] {
            let pool = Workers::new(workers).expect("pool");
            let blocks = pool.map_blocks(&items, |block| block.to_vec());
            assert_eq!(flat(&blocks), items, "{workers} workers");
            if workers == 1 {
                assert_eq!(blocks.len(), 1, "one worker: the batch whole");
            } else {
                assert_eq!(blocks.len(), items.len().div_ceil(BLOCK_RECORDS));
                assert!(blocks.iter().all(|b| b.len() <= BLOCK_RECORDS));
            }
        }
        let pool = Workers::new(2).expect("pool");
        assert_eq!(pool.map_blocks(&[] as &[u32], |c| c.len()), vec![0]);
        assert_eq!(pool.map_blocks(&[5u32], |c| c.to_vec()), vec![vec![5]]);
    }

    #[test]
    fn uneven_blocks_more_blocks_than_workers() {
        let pool = Workers::new(3).expect("pool");
        let items: Vec<u32> = (0..100).collect();
        // 100 = 14 × 7 + 2: the last block is short.
        let blocks = pool.map_in_blocks(&items, 3, 7, |block| block.to_vec());
        assert_eq!(blocks.len(), 15);
        assert_eq!(blocks[14], vec![98, 99]);
        assert_eq!(flat(&blocks), items);
        // Fewer blocks than workers: each block once, none empty.
        let blocks = pool.map_in_blocks(&items[..10], 3, 7, |block| block.to_vec());
        assert_eq!(blocks, vec![(0..7).collect::<Vec<_>>(), vec![7, 8, 9]]);
    }

    #[test]
    fn helpers_share_the_blocks_and_are_kept_between_batches() {
        let pool = Workers::new(2).expect("pool");
        let items: Vec<u32> = (0..512).collect();
        let mut helpers = HashSet::new();
        for _ in 0..5 {
            let threads = pool.map_blocks(&items, |_| {
                // Long enough that the helper wakes before the caller has
                // taken every block.
                std::thread::sleep(Duration::from_millis(1));
                std::thread::current().id()
            });
            let caller = std::thread::current().id();
            assert!(threads.contains(&caller), "the caller works too");
            helpers.extend(threads.into_iter().filter(|t| *t != caller));
        }
        assert_eq!(helpers.len(), 1, "one helper, the same for every batch");
    }

    #[test]
    fn a_slow_worker_takes_fewer_blocks() {
        let pool = Workers::new(2).expect("pool");
        let items: Vec<u32> = (0..64).collect();
        let caller = std::thread::current().id();
        let threads = pool.map_in_blocks(&items, 2, 4, |_| {
            let me = std::thread::current().id();
            let pause = if me == caller { 20 } else { 1 };
            std::thread::sleep(Duration::from_millis(pause));
            me
        });
        let by_caller = threads.iter().filter(|t| **t == caller).count();
        assert!(by_caller < 8, "the caller took {by_caller} of 16 blocks");
    }

    #[test]
    fn small_batches_stay_on_one_worker() {
        assert_eq!(workers_for(0, 2), 1);
        assert_eq!(workers_for(MIN_RECORDS_PER_WORKER * 2 - 1, 2), 1);
        assert_eq!(workers_for(MIN_RECORDS_PER_WORKER * 2, 2), 2);
        assert_eq!(workers_for(100_000, 2), 2);
        assert_eq!(workers_for(100_000, 1), 1);
        let pool = Workers::new(2).expect("pool");
        let caller = std::thread::current().id();
        let items: Vec<u32> = (0..(MIN_RECORDS_PER_WORKER * 2 - 1) as u32).collect();
        let threads = pool.map_blocks(&items, |_| std::thread::current().id());
        assert_eq!(threads, vec![caller]);
    }

    #[test]
    fn a_worker_panic_is_raised_in_the_caller_and_the_pool_goes_on() {
        let pool = Workers::new(2).expect("pool");
        let items: Vec<u32> = (0..1000).collect();
        let caller = std::thread::current().id();
        for panics_on_caller in [false, true] {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                pool.map_blocks(&items, |_| {
                    // Long enough that both threads take blocks.
                    std::thread::sleep(Duration::from_micros(200));
                    if (std::thread::current().id() == caller) == panics_on_caller {
                        panic!("worker failed");
                    }
                })
            }));
            let panic = outcome.expect_err("a worker panicked");
            assert_eq!(
                panic.downcast_ref::<&str>(),
                Some(&"worker failed"),
                "panic on the caller: {panics_on_caller}"
            );
        }
        // Not wedged: the next batches run whole, on both threads.
        for _ in 0..3 {
            let blocks = pool.map_blocks(&items, |block| {
                std::thread::sleep(Duration::from_micros(200));
                (std::thread::current().id(), block.to_vec())
            });
            let threads: HashSet<_> = blocks.iter().map(|(t, _)| *t).collect();
            assert_eq!(threads.len(), 2);
            let blocks: Vec<Vec<u32>> = blocks.into_iter().map(|(_, b)| b).collect();
            assert_eq!(flat(&blocks), items);
        }
    }
}
