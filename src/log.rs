//! A tiny leveled logger. Lines are formatted by the caller and written by one
//! background thread, so a request never waits on the terminal or a pipe.
//!
//! Nothing secret is ever passed in: callers log slugs, ids, statuses and masked keys.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Log severity, from `LOG_LEVEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    /// Parses `error|warn|warning|info|debug` (case-insensitive).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
enum Msg {
    Line(String),
    Flush(std::sync::mpsc::Sender<()>),
}

static SINK: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Sets the maximum level that is written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines at `level` are written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

thread_local! {
    /// The second of the last line formatted on this thread, and its RFC 3339 text
    /// without the `Z`: at thousands of lines a second, most lines reuse it.
    static SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Formats one line and hands it to the writer thread (stderr).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    use std::fmt::Write as _;
    write_with(level, |line| {
        let _ = line.write_fmt(args);
    });
}

/// Hands one line to the writer thread (stderr): the time and level, then what `message`
/// appends. A line written on every request (the access line) appends its parts itself:
/// `core::fmt` costs it about as much as the rest of the line.
pub fn write_with(level: Level, message: impl FnOnce(&mut String)) {
    let ms = crate::timefmt::now_ms();
    let mut line = String::with_capacity(128);
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != ms / 1000 {
            let mut text = crate::timefmt::rfc3339(ms / 1000);
            text.pop(); // the `Z`
            *cached = (ms / 1000, text);
        }
        line.push_str(&cached.1);
    });
    line.push('.');
    push_decimal(&mut line, ms % 1000, 3);
    line.push_str("Z ");
    line.push_str(level.label());
    line.push(' ');
    message(&mut line);
    line.push('\n');
    match SINK.get_or_init(spawn_writer).try_send(Msg::Line(line)) {
        // A full queue means stderr is stuck; dropping a line beats stalling requests.
        Ok(()) | Err(TrySendError::Full(_)) => {}
        Err(TrySendError::Disconnected(Msg::Line(line))) => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (at most 20).
pub fn push_decimal(line: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    start = start.min(digits.len() - width.clamp(1, digits.len()));
    line.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Waits (at most half a second) until queued lines are written; used before exit.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let (tx, rx) = std::sync::mpsc::channel();
        if sink.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_millis(500));
        }
    }
}

fn spawn_writer() -> SyncSender<Msg> {
    let (tx, rx) = sync_channel::<Msg>(16_384);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_loop(rx))
        .expect("spawn log writer thread");
    tx
}

/// How long the writer rests after each write. Lines queue meanwhile (the queue holds
/// 16,384), so under load a request never wakes the writer (one futex call and one
/// write per line otherwise: a third of the throughput at `LOG_LEVEL=info`), and lines
/// go out in one write per pause.
const WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

fn writer_loop(rx: Receiver<Msg>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        // Write whatever is already queued, then flush once.
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        std::thread::sleep(WRITE_PAUSE);
    }
}

/// Logs at ERROR.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Error) { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) } };
}
/// Logs at WARN.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Warn) { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) } };
}
/// Logs at INFO.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Info) { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) } };
}
/// Logs at DEBUG.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Debug) { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) } };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_with_their_padding() {
        let text = |n: u64, width: usize| {
            let mut s = String::new();
            push_decimal(&mut s, n, width);
            s
        };
        assert_eq!(text(0, 1), "0");
        assert_eq!(text(0, 0), "0", "a zero is one digit whatever the width");
        assert_eq!(text(7, 3), "007");
        assert_eq!(text(42, 3), "042");
        assert_eq!(text(999, 3), "999");
        assert_eq!(text(1234, 3), "1234", "padding never cuts digits");
        assert_eq!(text(1234, 1), "1234");
        assert_eq!(text(u64::MAX, 1), u64::MAX.to_string());
        assert_eq!(text(5, 99), "00000000000000000005", "at most 20 digits");
    }
}
