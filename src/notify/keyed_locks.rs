//! Async locks by key (an alert id, a channel id) that exist only while
//! someone holds or waits for one, so a key seen once costs nothing later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Holds one key's lock; dropping it lets the next waiter in (in the
/// order they asked) and forgets the key when nobody else wants it.
pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn lock_of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for `key`'s lock; waiters get it first come, first served.
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let guard = self.lock_of(key).lock_owned().await;
        KeyedGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    /// `key`'s lock if nobody holds it.
    pub fn try_lock(&self, key: &str) -> Option<KeyedGuard<'_>> {
        match self.lock_of(key).try_lock_owned() {
            Ok(guard) => Some(KeyedGuard {
                locks: self,
                key: key.to_owned(),
                guard: Some(guard),
            }),
            Err(_) => {
                // Forget the entry if this call made it for nothing.
                let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
                forget_if_unused(&mut locks, key);
                None
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn forget_if_unused(locks: &mut HashMap<String, Arc<tokio::sync::Mutex<()>>>, key: &str) {
    if locks
        .get(key)
        .is_some_and(|lock| Arc::strong_count(lock) == 1)
    {
        locks.remove(key);
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        // Under the map's lock, so no waiter can pick up the entry between
        // the release and the count.
        let mut locks = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        forget_if_unused(&mut locks, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_holder_per_key_in_order_and_forgotten_after() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("A").await;
        assert!(locks.try_lock("A").is_none(), "A is held");
        assert!(locks.try_lock("B").is_some(), "B is not");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..3 {
            let (locks, order) = (locks.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _held = locks.lock("A").await;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            // Each waiter queues before the next is spawned.
            tokio::task::yield_now().await;
        }
        assert!(order.lock().unwrap().is_empty(), "nobody passes the holder");
        drop(first);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(locks.len(), 0, "no entry left behind");
    }
}
