//! The consumer's fast path: a record's raw fields (numbers and fixed-size
//! byte arrays, no strings) resolve to pre-built metric handles through a
//! small hash table with a fast hash seeded per process (foldhash).
//! Label strings are built, the series cap consulted and the metric family locked only the
//! first time a key is seen. Handles stay valid for the process's life
//! (families never drop series), so a cached handle counts exactly what
//! the slow path would.
//!
//! The table is bounded: past `limit` keys it is cleared and refilled from
//! the slow path, which costs speed, never counts.

use std::{collections::HashMap, hash::Hash};

use foldhash::fast::RandomState;
use prometheus_client::metrics::counter::Counter;

/// A counter handle and, when the series cap folded its label set, the
/// `edgewatch_series_dropped_total` counter each event also moves.
#[derive(Clone, Debug)]
pub struct Capped<H> {
    pub handle: H,
    pub dropped: Option<Counter>,
}

impl<H> Capped<H> {
    /// Counts the event's fold, if its label set was folded.
    #[inline]
    pub fn note_fold(&self) {
        if let Some(d) = &self.dropped {
            d.inc();
        }
    }
}

/// Raw key -> handles, bounded, with the last key found kept beside the
/// table: consecutive records of one series (a burst of updates to one
/// map, one client's connects) compare a few bytes instead of hashing.
#[derive(Debug)]
pub struct HandleCache<K, V> {
    map: HashMap<K, V, RandomState>,
    limit: usize,
    last: Option<(K, V)>,
}

impl<K: Hash + Eq, V> HandleCache<K, V> {
    pub fn new(limit: usize) -> Self {
        Self {
            map: HashMap::with_hasher(RandomState::default()),
            limit: limit.max(16),
            last: None,
        }
    }

    /// The handles of `key`, built by `slow` on a miss.
    #[inline]
    pub fn get(&mut self, key: K, slow: impl FnOnce() -> V) -> &V {
        if self.map.len() >= self.limit && !self.map.contains_key(&key) {
            self.map.clear();
        }
        self.map.entry(key).or_insert_with(slow)
    }

    /// The handles of `key`, if cached.
    #[inline]
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Caches `value` under `key` (after a miss).
    pub fn insert(&mut self, key: K, value: V) {
        if self.map.len() >= self.limit {
            self.map.clear();
        }
        self.map.insert(key, value);
    }

    /// Forgets every key (after a reload changed what keys mean).
    pub fn clear(&mut self) {
        self.map.clear();
        self.last = None;
    }

    /// The handles of `key`, if cached: the last key found first, then the
    /// table (a hit there becomes the last key; its handles are cloned,
    /// which for counters is a reference count).
    #[inline]
    pub fn lookup(&mut self, key: &K) -> Option<&V>
    where
        K: Clone,
        V: Clone,
    {
        if !matches!(&self.last, Some((k, _)) if k == key) {
            let v = self.map.get(key)?.clone();
            self.last = Some((key.clone(), v));
        }
        self.last.as_ref().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_and_stays_bounded() {
        let mut c: HandleCache<u32, u32> = HandleCache::new(16);
        let mut built = 0;
        for round in 0..3 {
            for k in 0..10 {
                let v = *c.get(k, || {
                    built += 1;
                    k * 2
                });
                assert_eq!(v, k * 2, "round {round}");
            }
        }
        assert_eq!(built, 10);
        for k in 0..100 {
            c.get(k, || k);
        }
        assert!(c.len() <= 16);
    }

    #[test]
    fn the_last_key_answers_like_the_table() {
        let mut c: HandleCache<u32, u32> = HandleCache::new(16);
        assert_eq!(c.lookup(&1), None);
        c.insert(1, 10);
        c.insert(2, 20);
        for k in [1, 1, 2, 2, 1, 3, 2] {
            assert_eq!(c.lookup(&k).copied(), c.peek(&k).copied(), "key {k}");
        }
        // A reload's clear forgets the last key too.
        c.clear();
        assert_eq!(c.lookup(&2), None);
    }
}
