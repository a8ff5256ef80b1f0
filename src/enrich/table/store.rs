//! A table's contents: sharded live storage, the loader's staged build,
//! and the lookup the pipeline's joins use.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value as Json;

use crate::avro::{AvroError, Codec, Compact};
use crate::enrich::pipeline::TableLookup;

/// Lookups and live updates of different keys take different locks, and a
/// growing shard rehashes 1/64 of the table while the others serve.
const SHARDS: usize = 64;

type Shard = HashMap<Box<str>, Compact>;

/// One table's current contents: each record's value in its codec's
/// [`Compact`] form (for a small Avro row ~50 bytes instead of ~900 for a
/// JSON tree), decoded again on each lookup.
pub struct Table {
    id: String,
    pub(super) codec: Arc<Codec>,
    /// Picks a key's shard; each shard's map hashes with its own keys.
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
    /// Keys held; only the table's one loader writes.
    len: AtomicUsize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub fn new(id: &str, codec: Arc<Codec>) -> Table {
        Table {
            id: id.to_owned(),
            codec,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    fn shard_of(&self, key: &str) -> usize {
        shard_index(&self.hasher, key)
    }

    /// The record under `key`, decoded.
    pub fn get(&self, key: &str) -> Option<Arc<Json>> {
        let shard = self.shards[self.shard_of(key)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let compact = shard.get(key)?;
        match self.codec.expand(compact) {
            Ok(value) => Some(Arc::new(value)),
            Err(error) => {
                // Stored only after the same codec read it: a bug, not data.
                tracing::error!(table = %self.id, %error, "cannot decode a stored table record");
                None
            }
        }
    }

    /// Checks and stores one record's value (see [`Codec::compact`]).
    pub async fn upsert_record(&self, key: &str, payload: &[u8]) -> Result<usize, AvroError> {
        let value = self.codec.compact(payload).await?;
        Ok(self.upsert(key.into(), value))
    }

    pub fn upsert(&self, key: Box<str>, value: Compact) -> usize {
        let shard = self.shard_of(&key);
        let mut shard = self.shards[shard]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.insert(key, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.len()
        }
    }

    pub fn delete(&self, key: &str) -> usize {
        let shard = self.shard_of(key);
        let mut shard = self.shards[shard]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed) - 1
        } else {
            self.len()
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty build of this table's contents for its loader to fill
    /// alone, without a lock per record, before anyone reads the table.
    pub fn staging(&self) -> Staged {
        Staged {
            hasher: self.hasher.clone(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
        }
    }

    /// Replaces the contents with `staged` (built by [`Table::staging`]).
    pub fn publish(&self, staged: Staged) {
        for (lock, shard) in self.shards.iter().zip(staged.shards) {
            *lock.write().unwrap_or_else(|e| e.into_inner()) = shard;
        }
        self.len.store(staged.len, Ordering::Relaxed);
    }
}

/// A table's contents being built by its loader alone (the bootstrap).
pub struct Staged {
    hasher: RandomState,
    shards: Vec<Shard>,
    pub(super) len: usize,
}

impl Staged {
    pub fn upsert(&mut self, key: Box<str>, value: Compact) -> usize {
        let shard = shard_index(&self.hasher, &key);
        if self.shards[shard].insert(key, value).is_none() {
            self.len += 1;
        }
        self.len
    }

    pub fn delete(&mut self, key: &str) -> usize {
        if self.shards[shard_index(&self.hasher, key)]
            .remove(key)
            .is_some()
        {
            self.len -= 1;
        }
        self.len
    }
}

fn shard_index(hasher: &RandomState, key: &str) -> usize {
    // SipHash output bits are uniform; the low ones pick the shard.
    (hasher.hash_one(key) as usize) % SHARDS
}

/// All tables, by table id.
#[derive(Debug, Default)]
pub struct Tables {
    by_id: HashMap<String, Arc<Table>>,
}

impl Tables {
    /// The table `id`, created empty (its records read by `codec`) unless
    /// it exists.
    pub fn insert(&mut self, id: &str, codec: Arc<Codec>) -> Arc<Table> {
        self.by_id
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Table::new(id, codec)))
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Table>> {
        self.by_id.get(id)
    }
}

impl TableLookup for Tables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Json>> {
        self.by_id.get(table)?.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_table(id: &str) -> Table {
        Table::new(id, Arc::new(Codec::Json))
    }

    #[tokio::test]
    async fn tombstone_deletes_and_update_replaces() {
        let mut tables = Tables::default();
        let table = tables.insert("t", Arc::new(Codec::Json));
        assert_eq!(table.upsert_record("k", b"1").await.unwrap(), 1);
        assert_eq!(table.upsert_record("k", br#"{"a": [2]}"#).await.unwrap(), 1);
        assert_eq!(table.upsert_record("j", b"3").await.unwrap(), 2);
        assert_eq!(tables.lookup("t", "k").as_deref(), Some(&json!({"a": [2]})));
        assert_eq!(table.delete("k"), 1);
        assert_eq!(
            table.delete("k"),
            1,
            "deleting a missing key changes nothing"
        );
        assert_eq!(tables.lookup("t", "k"), None);
        assert_eq!(tables.lookup("other", "k"), None);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_record_the_codec_refuses_is_not_stored() {
        let table = json_table("t");
        let error = table.upsert_record("k", b"{nope").await.unwrap_err();
        assert!(error.to_string().starts_with("not valid JSON"), "{error}");
        assert!(table.is_empty());
        assert_eq!(table.get("k"), None);
    }

    #[tokio::test]
    async fn a_staged_build_is_invisible_until_published_then_replaces_the_contents() {
        let table = json_table("t");
        table.upsert_record("old", b"0").await.unwrap();
        let mut staged = table.staging();
        for i in 0..1000 {
            let value = Codec::Json.compact(i.to_string().as_bytes()).await.unwrap();
            assert_eq!(staged.upsert(format!("k{i}").into(), value), i + 1);
        }
        assert_eq!(staged.delete("k7"), 999);
        assert_eq!(staged.delete("k7"), 999);
        assert_eq!(table.get("k1"), None, "not published yet");
        assert_eq!(table.len(), 1);
        table.publish(staged);
        assert_eq!(table.len(), 999);
        assert_eq!(table.get("old"), None);
        assert_eq!(table.get("k7"), None);
        for i in (0..1000).filter(|i| *i != 7) {
            assert_eq!(table.get(&format!("k{i}")).as_deref(), Some(&json!(i)));
        }
        // Live updates after the bootstrap land in the published shards.
        table.upsert_record("k1", b"\"one\"").await.unwrap();
        assert_eq!(table.get("k1").as_deref(), Some(&json!("one")));
        assert_eq!(table.delete("k2"), 998);
    }
}
