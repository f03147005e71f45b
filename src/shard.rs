//! Which shard (server thread) runs the current code: the index of its slot in every
//! per-shard table (upstream connection pools, Redis connections, ticket leases).

use std::cell::Cell;

thread_local!(static SHARD: Cell<usize> = const { Cell::new(0) });

/// The shard running on this thread (0 on any other thread).
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// Marks this thread as shard `index` (the server, when it starts a shard's thread).
pub fn enter(index: usize) {
    SHARD.with(|s| s.set(index));
}
