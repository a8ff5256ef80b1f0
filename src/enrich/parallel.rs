//! A batch's records processed on every core with their outputs kept in
//! input order: the transaction is per batch, so records within one can be
//! rendered in any order as long as they are written in order.

use std::num::NonZeroUsize;

/// Below this many records per worker, a thread costs more than it saves.
pub const MIN_RECORDS_PER_WORKER: usize = 32;

/// How many workers `records` records are worth on `cores` cores.
pub fn workers_for(records: usize, cores: usize) -> usize {
    cores.min(records / MIN_RECORDS_PER_WORKER).max(1)
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// `f` of `workers` contiguous chunks of `items`, each on its own thread
/// (the caller's is one of them), results in chunk order. A panic in a
/// worker is raised again here.
pub fn map_chunks<T, R, F>(items: &[T], workers: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    if workers <= 1 || items.len() < 2 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(workers);
    let (first, rest) = items.split_at(size);
    std::thread::scope(|scope| {
        let f = &f;
        let others: Vec<_> = rest
            .chunks(size)
            .map(|chunk| scope.spawn(move || f(chunk)))
            .collect();
        let mut results = Vec::with_capacity(others.len() + 1);
        results.push(f(first));
        for other in others {
            match other.join() {
                Ok(result) => results.push(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_in_input_order_and_cover_every_item() {
        let items: Vec<u32> = (0..1001).collect();
        for workers in [1, 2, 3, 7] {
            let chunks = map_chunks(&items, workers, |chunk| {
                (std::thread::current().id(), chunk.to_vec())
            });
            assert_eq!(chunks.len(), workers, "{workers} workers");
            let flat: Vec<u32> = chunks.iter().flat_map(|(_, c)| c.clone()).collect();
            assert_eq!(flat, items);
            let threads: std::collections::HashSet<_> = chunks.iter().map(|(t, _)| *t).collect();
            assert_eq!(threads.len(), workers, "one thread per chunk");
        }
        assert_eq!(map_chunks(&[] as &[u32], 2, |c| c.len()), vec![0]);
        assert_eq!(map_chunks(&[5u32], 2, |c| c.to_vec()), vec![vec![5]]);
    }

    #[test]
    fn small_batches_stay_on_one_worker() {
        assert_eq!(workers_for(0, 2), 1);
        assert_eq!(workers_for(MIN_RECORDS_PER_WORKER * 2 - 1, 2), 1);
        assert_eq!(workers_for(MIN_RECORDS_PER_WORKER * 2, 2), 2);
        assert_eq!(workers_for(100_000, 2), 2);
        assert_eq!(workers_for(100_000, 1), 1);
    }

    #[test]
    #[should_panic(expected = "worker failed")]
    fn a_worker_panic_is_raised_in_the_caller() {
        let items: Vec<u32> = (0..10).collect();
        map_chunks(&items, 2, |chunk| {
            if chunk.contains(&9) {
                panic!("worker failed");
            }
        });
    }
}
