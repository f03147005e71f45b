//! Per-key statistics are counted in memory (atomics in each key's runtime) and written
//! to the store in batches: every `STATS_FLUSH_SECONDS` and once more at shutdown. A
//! failed write puts the counts back, so nothing is lost. Usage insight (rollups and the
//! request log) and when client keys were last used go in the same batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::state::AppState;
use crate::store::UsageBatch;
use crate::timefmt::now_ms;

/// How often the periodic flush writes the request log too. Each write replaces up to
/// `REQUEST_LOG_SIZE` rows (a row costs about as much as a proxied request), so under load
/// writing it every `STATS_FLUSH_SECONDS` cost several percent of the throughput. The
/// admin's reads of the log and the last flush at shutdown write it whenever they run.
const LOG_WRITE_INTERVAL: Duration = Duration::from_secs(30);
/// While new log entries come at most this fast (per second since the last log write),
/// the log is written at every flush all the same: at a low rate the write is cheap, and
/// holding half a minute of entries made the process's memory rise and fall by several MB
/// every half minute (the soak test's sawtooth). A rate, not a count: a slow write spaces
/// the flushes out, and more entries then wait at the same rate.
const SLOW_LOG_PER_SECOND: f64 = 1_000.0;

/// Writes pending counters and usage now (the request log `with_log`). Returns how many
/// keys were written.
pub async fn flush(state: &AppState, with_log: bool) -> usize {
    let started = Instant::now();
    flush_usage(state, with_log).await;
    let usage_done = started.elapsed();
    flush_client_keys(state).await;
    let keys = flush_keys(state).await;
    crate::log::debug!(
        "statistics written: usage in {} ms, {keys} keys in {} ms",
        usage_done.as_millis(),
        (started.elapsed() - usage_done).as_millis()
    );
    keys
}

/// Writes when client keys were last used, and shares the tokens they used here with the
/// other instances (enterprise build).
async fn flush_client_keys(state: &AppState) {
    let tokens = state.clients.take_tokens();
    if !state.cache.add_client_tokens(&tokens, now_ms()).await {
        state.clients.untake_tokens(&tokens);
    }
    let used = state.clients.take_used();
    if used.is_empty() {
        return;
    }
    if let Err(e) = state.store.touch_client_keys(used.clone()).await {
        crate::log::warn!("could not save when client keys were last used (will retry): {e}");
        state.clients.untake_used(&used);
    }
}

/// Writes the usage rollups and (`with_log`) the request log entries recorded since the
/// last flush.
pub async fn flush_usage(state: &AppState, with_log: bool) {
    let Some(usage) = &state.usage else {
        return;
    };
    // Made into rows on the blocking pool: a shard that sorted and formatted ten thousand
    // log entries itself held its requests up for tens of milliseconds (p99 at half load).
    let (pending, _writing) = usage.begin_flush(with_log).await;
    let Ok((rollups, entries)) = tokio::task::spawn_blocking(move || pending.into_rows()).await
    else {
        crate::log::warn!("could not prepare usage for writing");
        return;
    };
    if rollups.is_empty() && entries.is_empty() {
        return;
    }
    let keep_days = state.config.usage_retention_days.min(100 * 365) as i64;
    let batch = Arc::new(UsageBatch {
        rollups,
        entries,
        keep_entries: state.config.request_log_size,
        keep_since: (now_ms() / 1000) as i64 - keep_days * 86_400,
    });
    if let Err(e) = state.store.save_usage(batch.clone()).await {
        crate::log::warn!("could not save usage (will retry): {e}");
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|b| (*b).clone());
        usage.restore(batch.rollups, batch.entries);
    }
}

/// The counters of every key used since the last flush, in id order (the rows' order:
/// a write of 100,000 then touches each page once). Gathered on the blocking pool, so a
/// large pool's scan never holds up a shard.
async fn flush_keys(state: &AppState) -> usize {
    let now = now_ms();
    let runtimes = state.registry.all();
    let Ok(pending) = tokio::task::spawn_blocking(move || {
        let mut pending: Vec<_> = runtimes
            .into_iter()
            .filter_map(|rt| rt.take_update(now).map(|u| (rt, u)))
            .collect();
        pending.sort_unstable_by_key(|(_, u)| u.key_id);
        let updates: Vec<_> = pending.iter().map(|(_, u)| u.clone()).collect();
        (pending, updates)
    })
    .await
    else {
        return 0;
    };
    let (pending, updates) = pending;
    if pending.is_empty() {
        return 0;
    }
    let n = pending.len();
    match state.store.save_stats(updates).await {
        Ok(()) => n,
        Err(e) => {
            crate::log::warn!("could not save key statistics (will retry): {e}");
            for (rt, u) in &pending {
                rt.restore(u);
            }
            0
        }
    }
}

/// Flushes periodically until `stop` changes, then flushes a last time.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut log_written = Instant::now();
    let mut wait = state.config.stats_flush_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let pending = state.usage.as_ref().map_or(0, |u| u.log_pending());
                let with_log = writes_log(log_written.elapsed(), pending);
                if with_log {
                    log_written = Instant::now();
                }
                let started = Instant::now();
                flush(&state, with_log).await;
                wait = next_wait(state.config.stats_flush_interval, started.elapsed());
                let _ = tokio::task::spawn_blocking(crate::state::release_freed_memory).await;
            }
            _ = stop.changed() => break,
        }
    }
    flush(&state, true).await;
}

/// Whether a periodic flush writes the request log, `pending` entries made in the
/// `since_last` since it was last written: every [`LOG_WRITE_INTERVAL`], or whenever
/// they come slowly.
fn writes_log(since_last: Duration, pending: usize) -> bool {
    since_last >= LOG_WRITE_INTERVAL
        || pending as f64 <= SLOW_LOG_PER_SECOND * since_last.as_secs_f64()
}

/// Most of the time writing statistics may take: with a pool of 100,000 keys all in use,
/// one write is about a second, and writing it every 5 s cost a tenth of the throughput.
const MAX_WRITE_SHARE: u32 = 50;
/// Longest wait between writes, whatever they cost.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The wait before the next write: `interval`, or longer when the last write took more
/// than 1/[`MAX_WRITE_SHARE`] of it (then at most [`MAX_WAIT`]). Counters are written
/// whole at shutdown either way.
fn next_wait(interval: Duration, took: Duration) -> Duration {
    interval.max((took * MAX_WRITE_SHARE).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_request_log_waits_for_the_half_minute_a_slow_one_does_not() {
        let five = Duration::from_secs(5);
        assert!(writes_log(five, 0));
        assert!(writes_log(five, 5_000));
        assert!(!writes_log(five, 5_001));
        // A flush spaced out by a slow write: the same rate, more entries.
        assert!(writes_log(Duration::from_secs(8), 8_000));
        assert!(!writes_log(Duration::from_secs(8), 8_500));
        assert!(writes_log(LOG_WRITE_INTERVAL, 10_000));
    }

    #[test]
    fn slow_writes_space_out_the_next_ones() {
        let five = Duration::from_secs(5);
        assert_eq!(next_wait(five, Duration::from_millis(3)), five);
        assert_eq!(
            next_wait(five, Duration::from_millis(400)),
            Duration::from_secs(20)
        );
        assert_eq!(next_wait(five, Duration::from_secs(3)), MAX_WAIT);
        assert_eq!(
            next_wait(Duration::from_secs(90), Duration::from_secs(3)),
            Duration::from_secs(90)
        );
    }
}
