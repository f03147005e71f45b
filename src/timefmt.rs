//! Clock and date formats, hand-written so the binary needs no date crate:
//! RFC 3339 for JSON and logs, IMF-fixdate (RFC 9110 §5.6.7) for `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) for days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `2026-11-26T07:00:00Z` for a Unix time in seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `2026-11-26T07:00:00.123Z` for a Unix time in milliseconds (log lines).
pub fn rfc3339_millis(ms: u64) -> String {
    let mut s = rfc3339(ms / 1000);
    s.insert_str(s.len() - 1, &format!(".{:03}", ms % 1000));
    s
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH:MM]` into Unix seconds (UTC when no zone).
/// Accepts what GORM wrote into the original's SQLite files as well as RFC 3339.
/// Anything else, including out-of-range fields and non-ASCII bytes, is `None`.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits(&b[r]);
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &b[19..];
    if let Some(r) = rest.strip_prefix(b".") {
        let frac = r.iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &r[frac..];
    }
    let offset = match rest.trim_ascii() {
        b"" | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), hh @ .., b':', m1, m2] if hh.len() == 2 => {
            let secs = digits(hh)? * 3600 + digits(&[*m1, *m2])? * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let t = unix_seconds(y, mo, d, h, mi, se)? - offset;
    u64::try_from(t).ok()
}

/// An unsigned decimal of ASCII digits only (no sign, no spaces), at most 18 of them.
fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
}

/// Unix seconds for a calendar date and time of day, when every field is in range.
fn unix_seconds(y: i64, mo: i64, d: i64, h: i64, mi: i64, se: i64) -> Option<i64> {
    let in_range = (0..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..=23).contains(&h)
        && (0..=59).contains(&mi)
        && (0..=60).contains(&se);
    in_range.then(|| days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Parses an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT` into Unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = digits(parts[1].as_bytes())?;
    let m = MONTHS.iter().position(|x| *x == parts[2])? as i64 + 1;
    let y = digits(parts[3].as_bytes())?;
    let hms: Vec<&str> = parts[4].split(':').collect();
    let [h, mi, se] = hms[..] else { return None };
    let field = |v: &str| digits(v.as_bytes());
    let t = unix_seconds(y, m, d, field(h)?, field(mi)?, field(se)?)?;
    u64::try_from(t).ok()
}

/// Formats Unix seconds as an IMF-fixdate.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let rem = secs % 86_400;
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[m as usize - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0u64, 784_111_777, 1_795_000_000, 4_102_444_800] {
            assert_eq!(parse_datetime(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(rfc3339(784_111_777), "1994-11-06T08:49:37Z");
        assert_eq!(rfc3339_millis(784_111_777_042), "1994-11-06T08:49:37.042Z");
    }

    #[test]
    fn parses_gorm_sqlite_timestamps() {
        assert_eq!(
            parse_datetime("1994-11-06 16:49:37.123456789+08:00"),
            Some(784_111_777)
        );
        assert_eq!(parse_datetime("1994-11-06 08:49:37"), Some(784_111_777));
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn odd_dates_are_refused_without_a_panic() {
        // A multi-byte character where the zone's digits belong used to panic (slicing
        // inside a character), and fields out of range overflowed.
        for bad in [
            "2026-01-01T00:00:00+0\u{e9}00",
            "2026-01-01T00:00:00+00:\u{e9}",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026--1-01T00:00:00Z",
            "+026-01-01T00:00:00Z",
            "2026-01-01T00:00:00+1:000",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0));
        for bad in [
            "Sun, 06 Nov 99999999999999999 08:49:37 GMT",
            "Sun, 06 Nov 1994 99999999999999999:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37:00 GMT",
            "Sun, -6 Nov 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("120"), None);
    }
}
