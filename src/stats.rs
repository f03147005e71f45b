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

/// Writes pending counters and usage now (the request log `with_log`). Returns how many
/// keys were written.
pub async fn flush(state: &AppState, with_log: bool) -> usize {
    flush_usage(state, with_log).await;
    flush_client_keys(state).await;
    flush_keys(state).await
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
    let pending = usage.take_pending(with_log);
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

async fn flush_keys(state: &AppState) -> usize {
    let now = now_ms();
    let pending: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter_map(|rt| rt.take_update(now).map(|u| (rt, u)))
        .collect();
    if pending.is_empty() {
        return 0;
    }
    let updates = pending.iter().map(|(_, u)| u.clone()).collect();
    match state.store.save_stats(updates).await {
        Ok(()) => pending.len(),
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
    let mut tick = tokio::time::interval(state.config.stats_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_written = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let with_log = log_written.elapsed() >= LOG_WRITE_INTERVAL;
                if with_log {
                    log_written = Instant::now();
                }
                flush(&state, with_log).await;
            }
            _ = stop.changed() => break,
        }
    }
    flush(&state, true).await;
}
