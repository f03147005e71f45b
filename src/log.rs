//! A tiny leveled logger. Lines are formatted by the caller (in a buffer kept per
//! thread), appended to one shared buffer and written by one background thread, so a
//! request never waits on the terminal or a pipe, and a line costs no allocation.
//!
//! Nothing secret is ever passed in: callers log slugs, ids, statuses and masked keys.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

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

/// Lines not yet written, and the writer thread's alarm.
struct Sink {
    pending: Mutex<Vec<u8>>,
    /// Rung when a line goes into an empty `pending` (the writer waits for it).
    ready: Condvar,
    /// Held while a batch is taken and written, so batches go out in order.
    out: Mutex<()>,
}

/// What `pending` may hold; beyond, stderr is stuck, and dropping a line beats
/// stalling requests (about 40,000 access lines).
const MAX_PENDING: usize = 4 << 20;

static SINK: OnceLock<Sink> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink {
    fn get() -> &'static Sink {
        SINK.get_or_init(|| {
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(writer_loop)
                .expect("spawn log writer thread");
            Sink::new()
        })
    }

    fn new() -> Sink {
        Sink {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            ready: Condvar::new(),
            out: Mutex::new(()),
        }
    }

    fn push(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if pending.len() + line.len() > MAX_PENDING {
            return;
        }
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Writes what is pending to `to` (swapped with `spare`, which comes back empty).
    fn write_out(&self, _out: MutexGuard<'_, ()>, spare: &mut Vec<u8>, to: &mut impl Write) {
        std::mem::swap(&mut *lock(&self.pending), spare);
        let _ = to.write_all(spare);
        spare.clear();
        // After a burst, keep a buffer of ordinary size.
        spare.shrink_to(256 * 1024);
    }
}

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
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// Where this thread formats its lines (kept, so a line allocates nothing).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Formats one line and hands it to the writer thread (stderr).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    write_with(level, |line| {
        let _ = line.write_fmt(args);
    });
}

/// Hands one line to the writer thread (stderr): the time and level, then what `message`
/// appends. A line written on every request (the access line) appends its parts itself:
/// `core::fmt` costs it about as much as the rest of the line.
pub fn write_with(level: Level, message: impl FnOnce(&mut Vec<u8>)) {
    let sink = Sink::get();
    let mut message = Some(message);
    let mut compose = |line: &mut Vec<u8>| {
        line.clear();
        stamp(line, level);
        let start = line.len();
        if let Some(message) = message.take() {
            message(line);
        }
        escape_from(line, start);
        line.push(b'\n');
        sink.push(line);
    };
    // A line formatted while this thread formats another (or as it exits) gets a buffer
    // of its own.
    let reused = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            compose(&mut line);
            true
        }
        Err(_) => false,
    });
    if reused != Ok(true) {
        compose(&mut Vec::new());
    }
}

/// Escapes what could end a line or fake one in `line[start..]`, whatever field it came
/// from (a client's path, an upstream's error text): control characters (C0, DEL, C1
/// such as U+0085) and the line and paragraph separators U+2028 and U+2029, as `\xNN`
/// or `\u{NNNN}`; bytes that are not UTF-8 as `\xNN`. Lines of plain printable ASCII, the
/// usual case, are only looked at.
pub fn escape_from(line: &mut Vec<u8>, start: usize) {
    if line[start..].iter().all(|b| (0x20..0x7f).contains(b)) {
        return;
    }
    let tail = line.split_off(start);
    let mut rest = &tail[..];
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (ok, after) = rest.split_at(e.valid_up_to());
                let n = e.error_len().unwrap_or(after.len());
                // SAFETY-free: `ok` was just checked to be UTF-8.
                (std::str::from_utf8(ok).unwrap_or(""), &after[..n])
            }
        };
        for c in valid.chars() {
            match c {
                '\u{0}'..='\u{1f}' | '\u{7f}' => push_hex_byte(line, c as u8),
                '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                    use std::io::Write as _;
                    let _ = write!(line, "\\u{{{:x}}}", c as u32);
                }
                c => {
                    let mut buf = [0u8; 4];
                    line.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for &b in bad {
            push_hex_byte(line, b);
        }
        rest = &rest[valid.len() + bad.len()..];
    }
}

fn push_hex_byte(line: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    line.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// The time (UTC, milliseconds) and the level.
fn stamp(line: &mut Vec<u8>, level: Level) {
    let ms = crate::timefmt::now_ms();
    let second = |s: u64| {
        let mut text = crate::timefmt::rfc3339(s);
        text.pop(); // the `Z`
        text
    };
    let cached = SECOND.try_with(|cell| {
        let mut cached = cell.try_borrow_mut().ok()?;
        if cached.0 != ms / 1000 {
            *cached = (ms / 1000, second(ms / 1000));
        }
        line.extend_from_slice(cached.1.as_bytes());
        Some(())
    });
    if cached.ok().flatten().is_none() {
        line.extend_from_slice(second(ms / 1000).as_bytes());
    }
    line.push(b'.');
    push_decimal(line, ms % 1000, 3);
    line.extend_from_slice(b"Z ");
    line.extend_from_slice(level.label().as_bytes());
    line.push(b' ');
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (at most 20).
pub fn push_decimal(line: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    start = start.min(digits.len() - width.clamp(1, digits.len()));
    // Byte by byte: a `memcpy` call costs more than the few digits of a number.
    for &digit in &digits[start..] {
        line.push(digit);
    }
}

/// Writes what is pending, waiting at most half a second for a batch being written;
/// used before exit.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match sink.out.try_lock() {
            Ok(out) => return sink.write_out(out, &mut Vec::new(), &mut std::io::stderr()),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                return sink.write_out(p.into_inner(), &mut Vec::new(), &mut std::io::stderr());
            }
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        }
    }
}

/// How long the writer rests after each batch. Lines gather meanwhile, so under load a
/// request never wakes the writer (one futex call and one write per line otherwise: a
/// third of the throughput at `LOG_LEVEL=info`), and they go out in one write per pause.
const WRITE_PAUSE: Duration = Duration::from_millis(5);

fn writer_loop() {
    let sink = Sink::get();
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let mut pending = lock(&sink.pending);
        while pending.is_empty() {
            pending = sink.ready.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        drop(pending);
        sink.write_out(lock(&sink.out), &mut spare, &mut std::io::stderr());
        std::thread::sleep(WRITE_PAUSE);
    }
}

/// Logs at ERROR: `log::error!("…", …)`.
macro_rules! error {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Error) { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) } };
}
/// Logs at WARN.
macro_rules! warn_ {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Warn) { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) } };
}
/// Logs at INFO.
macro_rules! info {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Info) { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) } };
}
/// Logs at DEBUG.
macro_rules! debug {
    ($($arg:tt)*) => { if $crate::log::enabled($crate::log::Level::Debug) { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) } };
}
pub(crate) use {debug, error, info, warn_ as warn};

/// Logs one line at `level` (for the binary, which cannot use the crate's macros).
pub fn line(level: Level, text: &str) {
    if enabled(level) {
        write(level, format_args!("{text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_with_their_padding() {
        let text = |n: u64, width: usize| {
            let mut s = Vec::new();
            push_decimal(&mut s, n, width);
            String::from_utf8(s).unwrap()
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

    #[test]
    fn lines_go_out_in_order_and_a_stuck_writer_drops_new_ones() {
        let sink = Sink::new();
        sink.push(b"one\n");
        sink.push(b"two\n");
        let (mut spare, mut out) = (Vec::new(), Vec::new());
        sink.write_out(lock(&sink.out), &mut spare, &mut out);
        sink.push(b"three\n");
        sink.write_out(lock(&sink.out), &mut spare, &mut out);
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert!(lock(&sink.pending).is_empty() && spare.is_empty());

        let line = [b'x'; 1000];
        for _ in 0..MAX_PENDING / 1000 + 10 {
            sink.push(&line);
        }
        let held = lock(&sink.pending).len();
        assert!(held <= MAX_PENDING && held > MAX_PENDING - 1000, "{held}");
        out.clear();
        sink.write_out(lock(&sink.out), &mut spare, &mut out);
        assert_eq!(out.len(), held, "whole lines only");
        sink.push(b"after\n");
        assert_eq!(*lock(&sink.pending), b"after\n", "room again once written");
    }

    #[test]
    fn nothing_logged_can_start_a_new_line() {
        let escaped = |text: &[u8]| {
            let mut line = b"KEEP ".to_vec();
            line.extend_from_slice(text);
            escape_from(&mut line, 5);
            String::from_utf8(line).unwrap()
        };
        assert_eq!(escaped(b"GET /plain/path"), "KEEP GET /plain/path");
        assert_eq!(
            escaped("/x\u{85}2026 WARN\u{2028}fake\u{2029}".as_bytes()),
            "KEEP /x\\u{85}2026 WARN\\u{2028}fake\\u{2029}"
        );
        assert_eq!(escaped(b"a\r\nb\tc\x7f"), "KEEP a\\x0d\\x0ab\\x09c\\x7f");
        assert_eq!(escaped(b"bad \xff\xfe utf8"), "KEEP bad \\xff\\xfe utf8");
        assert_eq!(
            escaped("caf\u{e9} \u{4e2d}\u{6587}".as_bytes()),
            "KEEP caf\u{e9} \u{4e2d}\u{6587}"
        );
        let out = escaped("\u{85}\u{2028}\r\n".as_bytes());
        assert!(!out.contains(['\n', '\r', '\u{85}', '\u{2028}']), "{out}");
    }

    #[test]
    fn a_line_is_stamped_and_ends_with_a_newline() {
        let mut line = Vec::new();
        stamp(&mut line, Level::Warn);
        let line = String::from_utf8(line).unwrap();
        // 2026-11-27T03:50:12.345Z WARN  (the level padded to five)
        assert_eq!(line.len(), 24 + 1 + 6, "{line:?}");
        assert!(line.ends_with("Z WARN  "), "{line:?}");
        assert_eq!(&line[10..11], "T");
    }
}
