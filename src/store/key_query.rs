//! Which of a service's keys an admin asks for: a page (state filter, search, sort,
//! cursor) and the selection a bulk action works on. The SQL is shared by SQLite and
//! MySQL; the stores bind the [`Arg`]s.
//!
//! A page is keyset-paged (`WHERE (sort value, id) > cursor ORDER BY sort value, id`), so
//! it costs the same at the first key and at the 100,000th, and keys added or deleted
//! while someone pages never make a page skip or repeat a key that stays.

use super::usage::{Arg, Dialect};

/// Largest page.
pub const MAX_PAGE: usize = 1000;
/// Ids per statement when a bulk action works through a list of ids.
pub const CHUNK: usize = 500;
/// Characters of a key kept in plain text for search: what a masked key shows.
pub const TAIL_CHARS: usize = 4;
/// Longest note on a key.
pub const MAX_NOTE: usize = 200;

/// A key's state, as the filter sees it (the state last saved: health changes reach the
/// database within the statistics interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Active,
    Cooling,
    Invalid,
    Disabled,
}

impl StateFilter {
    pub fn parse(s: &str) -> Option<StateFilter> {
        Some(match s {
            "active" => StateFilter::Active,
            "cooling" => StateFilter::Cooling,
            "invalid" => StateFilter::Invalid,
            "disabled" => StateFilter::Disabled,
            _ => return None,
        })
    }
}

/// What a page is ordered by (then by id, in the same direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Id,
    Failures,
    LastUsed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sort {
    pub by: SortBy,
    pub desc: bool,
}

impl Sort {
    /// `id`, `failures`, `last_used`, each with an optional leading `-` (descending).
    pub fn parse(s: &str) -> Option<Sort> {
        let (desc, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let by = match name {
            "id" => SortBy::Id,
            "failures" => SortBy::Failures,
            "last_used" => SortBy::LastUsed,
            _ => return None,
        };
        Some(Sort { by, desc })
    }

    fn column(self) -> &'static str {
        match self.by {
            SortBy::Id => "id",
            SortBy::Failures => "COALESCE(failure_count, 0)",
            SortBy::LastUsed => "COALESCE(last_used_at, 0)",
        }
    }

    /// The value of a key this sort orders by.
    pub fn value_of(self, k: &super::KeyRecord) -> i64 {
        match self.by {
            SortBy::Id => k.id,
            SortBy::Failures => k.stats.failure_count,
            SortBy::LastUsed => k.stats.last_used_at.unwrap_or(0),
        }
    }
}

/// Where the next page starts: after the key with this sort value and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub value: i64,
    pub id: i64,
}

impl Cursor {
    /// After key `id`, in id order.
    pub fn after_id(id: i64) -> Cursor {
        Cursor { value: id, id }
    }

    pub fn encode(self) -> String {
        format!("{}_{}", self.value, self.id)
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let (v, id) = s.split_once('_')?;
        Some(Cursor {
            value: v.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// Which keys of a service: by state and by a search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub state: Option<StateFilter>,
    /// Matches the whole key, the key's last characters (up to [`TAIL_CHARS`]), or a part
    /// of its note (case-insensitive).
    pub q: Option<String>,
}

/// One page of a service's keys.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub service_id: i64,
    pub filter: KeyFilter,
    pub sort: Sort,
    pub after: Option<Cursor>,
    /// 1..=[`MAX_PAGE`].
    pub limit: usize,
}

/// The keys a bulk action works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These ids (those not in the service are ignored).
    Ids(Vec<i64>),
    /// Every key the filter matches.
    Filter(KeyFilter),
}

/// What a bulk action does, in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Enable,
    Disable,
    Delete,
    /// Clears the invalid mark and the cooldown (the counters stay).
    Reset,
}

impl BulkAction {
    /// The statement for a chunk of `n` ids.
    pub fn sql(self, n: usize) -> String {
        let ids = placeholders(n);
        match self {
            BulkAction::Enable => format!("UPDATE api_keys SET is_active = 1 WHERE id IN ({ids})"),
            BulkAction::Disable => format!("UPDATE api_keys SET is_active = 0 WHERE id IN ({ids})"),
            BulkAction::Delete => format!("DELETE FROM api_keys WHERE id IN ({ids})"),
            BulkAction::Reset => format!(
                "UPDATE api_keys SET invalid_reason = NULL, invalid_at = NULL, \
                 cooldown_until = NULL, consecutive_failures = 0 WHERE id IN ({ids})"
            ),
        }
    }
}

/// `?, ?, …` (`n` of them).
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// The last characters of a key, kept for search.
pub fn tail(value: &str) -> String {
    let n = value.chars().count();
    value.chars().skip(n.saturating_sub(TAIL_CHARS)).collect()
}

/// `LIKE` text matching `q` anywhere, with `!` as the escape.
fn like_anywhere(q: &str) -> String {
    let mut s = String::from("%");
    for c in q.chars() {
        if matches!(c, '!' | '%' | '_') {
            s.push('!');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// The condition of `filter` on a service's keys, and its arguments. `lookups` are the
/// keyed hashes of `q` as a whole key (encrypted stores); `now_ms` decides cooling.
fn condition(
    d: Dialect,
    service_id: i64,
    filter: &KeyFilter,
    lookups: &[String],
    now_ms: i64,
) -> (String, Vec<Arg>) {
    let mut sql = String::from("proxy_config_id = ?");
    let mut args = vec![Arg::Int(service_id)];
    let active = match d {
        Dialect::Sqlite => "COALESCE(is_active, 1) NOT IN (0, '0', 'false', 'FALSE', 'f', '')",
        Dialect::Mysql => "COALESCE(is_active, 1) <> 0",
    };
    if let Some(state) = filter.state {
        let cond = match state {
            StateFilter::Disabled => format!("NOT ({active})"),
            StateFilter::Invalid => format!("{active} AND invalid_reason IS NOT NULL"),
            StateFilter::Cooling => {
                args.push(Arg::Int(now_ms));
                format!("{active} AND invalid_reason IS NULL AND cooldown_until > ?")
            }
            StateFilter::Active => {
                args.push(Arg::Int(now_ms));
                format!("{active} AND invalid_reason IS NULL AND COALESCE(cooldown_until, 0) <= ?")
            }
        };
        sql.push_str(&format!(" AND ({cond})"));
    }
    if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
        let mut any = vec!["key_value = ?".to_string()];
        args.push(Arg::Text(q.into()));
        for l in lookups {
            any.push("key_lookup = ?".into());
            args.push(Arg::Text(l.clone()));
        }
        let n = q.chars().count();
        if n <= TAIL_CHARS {
            any.push(match d {
                Dialect::Sqlite => {
                    format!("(length(key_tail) >= {n} AND substr(key_tail, -{n}) = ?)")
                }
                Dialect::Mysql => {
                    format!("(CHAR_LENGTH(key_tail) >= {n} AND RIGHT(key_tail, {n}) = ?)")
                }
            });
            args.push(Arg::Text(q.into()));
        }
        any.push("note LIKE ? ESCAPE '!'".into());
        args.push(Arg::Text(like_anywhere(q)));
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    (sql, args)
}

/// The text and arguments of one page (`columns` are the store's key columns), asking
/// for `limit` rows.
pub fn page(
    d: Dialect,
    columns: &str,
    q: &PageQuery,
    lookups: &[String],
    now_ms: i64,
) -> (String, Vec<Arg>) {
    let (mut cond, mut args) = condition(d, q.service_id, &q.filter, lookups, now_ms);
    let col = q.sort.column();
    let (cmp, dir) = if q.sort.desc {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(c) = q.after {
        if q.sort.by == SortBy::Id {
            cond.push_str(&format!(" AND id {cmp} ?"));
            args.push(Arg::Int(c.id));
        } else {
            cond.push_str(&format!(
                " AND ({col} {cmp} ? OR ({col} = ? AND id {cmp} ?))"
            ));
            args.extend([Arg::Int(c.value), Arg::Int(c.value), Arg::Int(c.id)]);
        }
    }
    let order = match q.sort.by {
        SortBy::Id => format!("id {dir}"),
        _ => format!("{col} {dir}, id {dir}"),
    };
    args.push(Arg::Int(q.limit as i64));
    (
        format!("SELECT {columns} FROM api_keys WHERE {cond} ORDER BY {order} LIMIT ?"),
        args,
    )
}

/// What a selection query answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// How many keys match.
    Count,
    /// Their ids, in id order.
    Ids,
}

/// The keys `filter` matches: counted or listed.
pub fn matching(
    answer: Answer,
    d: Dialect,
    service_id: i64,
    filter: &KeyFilter,
    lookups: &[String],
    now_ms: i64,
) -> (String, Vec<Arg>) {
    let (cond, args) = condition(d, service_id, filter, lookups, now_ms);
    let text = match answer {
        Answer::Count => format!("SELECT COUNT(*) FROM api_keys WHERE {cond}"),
        Answer::Ids => format!("SELECT id FROM api_keys WHERE {cond} ORDER BY id"),
    };
    (text, args)
}

/// Of a chunk of ids, those in the service.
pub fn ids_in_service(service_id: i64, chunk: &[i64]) -> (String, Vec<Arg>) {
    let mut args = vec![Arg::Int(service_id)];
    args.extend(chunk.iter().map(|id| Arg::Int(*id)));
    (
        format!(
            "SELECT id FROM api_keys WHERE proxy_config_id = ? AND id IN ({}) ORDER BY id",
            placeholders(chunk.len())
        ),
        args,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_sorts_round_trip() {
        let c = Cursor { value: -3, id: 42 };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        assert_eq!(Cursor::parse("12"), None);
        assert_eq!(Cursor::parse("a_1"), None);
        assert_eq!(
            Sort::parse("-failures"),
            Some(Sort {
                by: SortBy::Failures,
                desc: true
            })
        );
        assert_eq!(Sort::parse("name"), None);
    }

    #[test]
    fn search_text_is_escaped_and_tails_are_the_last_characters() {
        assert_eq!(like_anywhere("50%_off!"), "%50!%!_off!!%");
        assert_eq!(tail("sk-abcdef"), "cdef");
        assert_eq!(tail("ab"), "ab");
        assert_eq!(
            tail("sk-ключи"),
            "ключи".chars().skip(1).collect::<String>()
        );
    }

    #[test]
    fn a_long_search_does_not_match_tails() {
        let f = KeyFilter {
            state: None,
            q: Some("abcdef".into()),
        };
        let (sql, args) = condition(Dialect::Sqlite, 1, &f, &[], 0);
        assert!(!sql.contains("key_tail"), "{sql}");
        assert_eq!(args.len(), 3);
        let f = KeyFilter {
            state: Some(StateFilter::Cooling),
            q: Some("cdef".into()),
        };
        let (sql, args) = condition(Dialect::Mysql, 1, &f, &["h".into()], 9);
        assert!(sql.contains("RIGHT(key_tail, 4)"), "{sql}");
        assert_eq!(args.len(), 6);
    }
}
