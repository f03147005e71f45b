//! The hourly rollups one shard counts between two flushes, laid out for a large pool.
//!
//! A rollup is counted by hour, service, client key, model and key. The first four make a
//! [`Group`]: a shard sees few of them. Each group counts its keys in a table whose
//! bucket is the key's id ([`ById`]). Keys are picked in id order, round robin, so
//! successive requests count into successive buckets: memory the processor reads ahead,
//! not a cache miss per request. A key's counts are 32-bit: 56 bytes with its id, where
//! one entry of the whole identity and 64-bit counts took 136, in a random place. A count
//! that would not fit moves that key's counts to a 64-bit table ([`KeyCounts::wide`]).

use std::collections::HashMap;

use super::{Counts, Rollup};

/// Hashing for maps keyed by the proxy's own ids (never a client's bytes, so no flooding
/// to guard against): a multiply per id instead of SipHash, on every request.
pub(super) type Ids = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.write_u64(u64::from(*b)));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A key id's hash: the id itself in the low bits, which pick the bucket, so that
/// successive ids go to successive buckets; mixed bits on top, which the table keeps as
/// the bucket's tag, so that a look-up compares one key, not every key near it. The
/// layout is the standard map's (its bucket is the hash's low bits, its tag the top
/// seven); were it to change, only the speed would.
pub(super) type ById = std::hash::BuildHasherDefault<IdBucket>;

#[derive(Default)]
pub(super) struct IdBucket(u64);

/// The bits of a hash that pick the bucket (below the tag's seven).
const BUCKET_BITS: u64 = (1 << 57) - 1;

impl std::hash::Hasher for IdBucket {
    fn write(&mut self, _: &[u8]) {
        unreachable!("IdBucket hashes key ids (i64) only");
    }
    fn write_i64(&mut self, n: i64) {
        let n = n as u64;
        self.0 = (n & BUCKET_BITS) | (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & !BUCKET_BITS);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What a rollup is counted by, but the key. The model is a number from [`Models`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    hour: i64,
    service: i64,
    client: i64,
    model: u32,
}

/// A key's counts in 32 bits each, in [`Counts`]' order.
#[derive(Clone, Copy, Default)]
struct Narrow([u32; 12]);

impl Narrow {
    /// Adds `c`, or returns `false` (and changes nothing) when a count would not fit.
    fn add(&mut self, c: &[i64; 12]) -> bool {
        // In 64 bits, with one test at the end: a loop the compiler makes vector code of.
        let mut sum = [0u64; 12];
        let mut high = 0;
        for ((s, &old), &v) in sum.iter_mut().zip(&self.0).zip(c) {
            // A negative `v` sets the top bits, as a sum past 32 bits does.
            *s = u64::from(old).wrapping_add(v as u64);
            high |= *s | v as u64;
        }
        if high >> 32 != 0 {
            return false;
        }
        self.0 = sum.map(|s| s as u32);
        true
    }

    fn wide(&self) -> Counts {
        Counts::from_array(self.0.map(i64::from))
    }
}

/// One group's counts by key id.
#[derive(Default)]
struct KeyCounts {
    narrow: HashMap<i64, Narrow, ById>,
    /// Keys whose counts outgrew 32 bits (tokens of huge answers, a long outage's
    /// restored counts): rare.
    wide: HashMap<i64, Counts, Ids>,
}

impl KeyCounts {
    fn add(&mut self, key: i64, c: &Counts) {
        let a = c.to_array();
        let narrow = self.narrow.entry(key).or_default();
        if narrow.add(&a) {
            return;
        }
        let moved = std::mem::take(narrow).wide();
        let wide = self.wide.entry(key).or_default();
        wide.add(&moved);
        wide.add(c);
    }

    /// How many keys (every key has 32-bit counts, zero once moved).
    fn len(&self) -> usize {
        self.narrow.len()
    }

    /// Each key's counts, both tables' added.
    fn into_counts(self) -> impl Iterator<Item = (i64, Counts)> {
        let mut wide = self.wide;
        self.narrow.into_iter().map(move |(key, n)| {
            let mut c = n.wide();
            if let Some(w) = wide.remove(&key) {
                c.add(&w);
            }
            (key, c)
        })
    }
}

/// The rollups one shard counted since the last flush.
#[derive(Default)]
pub(super) struct Rollups {
    groups: Vec<(Group, KeyCounts)>,
    /// Where each group is in `groups`.
    index: HashMap<Group, usize, Ids>,
    /// The group used last: a shard mostly sees the same one again.
    last: usize,
    models: Models,
    /// Room for the first group's keys (the last buffer's largest group).
    room: usize,
}

impl Rollups {
    /// Empty, its first group with room for the keys of this one's largest: a large pool
    /// fills as many again, and growing the table on the way copies it each time.
    pub(super) fn like(&self) -> Rollups {
        Rollups {
            room: self.groups.iter().map(|(_, k)| k.len()).max().unwrap_or(0),
            ..Rollups::default()
        }
    }

    /// How many rollups: one per key per group.
    pub(super) fn len(&self) -> usize {
        self.groups.iter().map(|(_, k)| k.len()).sum()
    }

    pub(super) fn add(
        &mut self,
        hour: i64,
        service: i64,
        key: i64,
        client: i64,
        model: &str,
        c: &Counts,
    ) {
        let model = self.models.id(model);
        let group = Group {
            hour,
            service,
            client,
            model,
        };
        let i = match self.groups.get(self.last) {
            Some((g, _)) if *g == group => self.last,
            _ => self.group(group),
        };
        self.last = i;
        self.groups[i].1.add(key, c);
    }

    /// The position of `group`, added if new.
    fn group(&mut self, group: Group) -> usize {
        if let Some(&i) = self.index.get(&group) {
            return i;
        }
        let mut counts = KeyCounts::default();
        if self.groups.is_empty() {
            counts.narrow.reserve(self.room);
        }
        self.groups.push((group, counts));
        self.index.insert(group, self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// Every rollup, appended to `out`.
    pub(super) fn drain_into(self, out: &mut Vec<Rollup>) {
        let names = self.models.names;
        for (g, keys) in self.groups {
            let model = &names[g.model as usize];
            out.extend(keys.into_counts().map(|(key_id, counts)| Rollup {
                hour: g.hour,
                service_id: g.service,
                key_id,
                client_key_id: g.client,
                model: model.to_string(),
                counts,
            }));
        }
    }
}

/// The model names a shard's rollups use, each given a number.
#[derive(Default)]
struct Models {
    names: Vec<Box<str>>,
    /// Names come from clients: looked up by hash, not by a walk through the list.
    ids: HashMap<Box<str>, u32>,
    /// The last one used (a shard mostly sees the same model again).
    last: u32,
}

impl Models {
    fn id(&mut self, name: &str) -> u32 {
        if self
            .names
            .get(self.last as usize)
            .is_some_and(|n| **n == *name)
        {
            return self.last;
        }
        self.last = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(name.into());
                self.ids.insert(name.into(), id);
                id
            }
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(tokens_in: i64) -> Counts {
        Counts {
            requests: 1,
            successes: 1,
            tokens_in,
            latency_ms_sum: 7,
            ..Counts::default()
        }
    }

    fn rows(r: Rollups) -> Vec<Rollup> {
        let mut out = Vec::new();
        r.drain_into(&mut out);
        out.sort_by_key(|r| {
            (
                r.hour,
                r.service_id,
                r.client_key_id,
                r.model.clone(),
                r.key_id,
            )
        });
        out
    }

    #[test]
    fn counts_by_group_and_key() {
        let mut r = Rollups::default();
        for key in [5, 6, 5] {
            r.add(3600, 1, key, 0, "m", &one(10));
        }
        r.add(3600, 1, 5, 9, "m", &one(1));
        r.add(7200, 1, 5, 0, "m", &one(1));
        r.add(3600, 2, 5, 0, "other", &one(1));
        assert_eq!(r.len(), 5);
        let rows = rows(r);
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                let (svc, client) = (r.service_id, r.client_key_id);
                (
                    r.hour,
                    svc,
                    client,
                    r.model.as_str(),
                    r.key_id,
                    r.counts.requests,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (3600, 1, 0, "m", 5, 2),
                (3600, 1, 0, "m", 6, 1),
                (3600, 1, 9, "m", 5, 1),
                (3600, 2, 0, "other", 5, 1),
                (7200, 1, 0, "m", 5, 1),
            ]
        );
        assert_eq!(rows[0].counts.tokens_in, 20);
        assert_eq!(rows[0].counts.latency_ms_sum, 14);
    }

    #[test]
    fn counts_past_32_bits_stay_exact() {
        let mut r = Rollups::default();
        let big = i64::from(u32::MAX) - 5;
        r.add(0, 1, 5, 0, "m", &one(big));
        r.add(0, 1, 5, 0, "m", &one(big)); // no longer fits: moves to 64 bits
        r.add(0, 1, 5, 0, "m", &one(3)); // fits again in 32 bits
        r.add(0, 1, 5, 0, "m", &one(-1)); // not a count 32 bits hold
        r.add(0, 1, 6, 0, "m", &one(1));
        let rows = rows(r);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].counts.tokens_in, 2 * big + 3 - 1);
        assert_eq!(rows[0].counts.requests, 4);
        assert_eq!(rows[0].counts.latency_ms_sum, 28);
        assert_eq!(rows[1].counts.tokens_in, 1);
    }

    #[test]
    fn successive_ids_are_counted_side_by_side_in_memory() {
        let mut k = KeyCounts::default();
        k.narrow.reserve(4096);
        for id in 100_000..101_000 {
            k.add(id, &one(0));
        }
        let at = |id: i64| &k.narrow[&id] as *const Narrow as isize;
        let entry = std::mem::size_of::<(i64, Narrow)>() as isize;
        let adjacent = (100_000..100_999)
            .filter(|&id| (at(id + 1) - at(id)).abs() == entry)
            .count();
        assert!(adjacent >= 990, "{adjacent} of 999 side by side");
        // The buckets' tags are spread, so a look-up compares one key.
        use std::hash::BuildHasher;
        let tag = |id: i64| ById::default().hash_one(id) >> 57;
        let tags: std::collections::HashSet<_> = (0..64).map(tag).collect();
        assert!(tags.len() > 32, "{} tags of 64 ids", tags.len());
    }

    #[test]
    fn a_fresh_buffer_has_room_for_the_last_ones_keys() {
        let mut r = Rollups::default();
        for key in 0..1000 {
            r.add(0, 1, key, 0, "", &one(0));
        }
        let mut next = r.like();
        next.add(0, 1, 1, 0, "", &one(0));
        assert!(next.groups[0].1.narrow.capacity() >= 1000);
    }
}
