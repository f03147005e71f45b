//! The store test suite: the same checks for every backend (SQLite here, MySQL in the
//! enterprise tests). Each check takes a fresh, empty store.

use api_key_rotator::store::{KeyHealth, ServiceFields, StatsUpdate, Store, StoreError};

pub fn generic(slug: &str) -> ServiceFields {
    ServiceFields {
        name: format!("Service {slug}"),
        slug: slug.into(),
        config_type: "GENERIC".into(),
        is_active: true,
        method: Some("GET".into()),
        target_url: Some("https://api.example.com/v1".into()),
        api_key_location: Some("header".into()),
        api_key_name: Some("X-Key".into()),
        ..Default::default()
    }
}

pub fn llm(slug: &str) -> ServiceFields {
    ServiceFields {
        name: format!("LLM {slug}"),
        slug: slug.into(),
        config_type: "LLM".into(),
        is_active: false,
        target_base_url: Some("https://api.openai.com/v1".into()),
        api_format: Some("openai_compatible".into()),
        output_format: Some("none".into()),
        max_retries: Some(3),
        retry_on: Some("429,500".into()),
        ..Default::default()
    }
}

/// Services: create, read back every field, list in id order, update, toggle, delete.
pub async fn services_round_trip(store: &dyn Store) {
    assert!(store.list_services().await.unwrap().is_empty());
    let a = store.create_service(generic("alpha")).await.unwrap();
    let b = store.create_service(llm("beta")).await.unwrap();
    assert!(b.id > a.id);
    assert_eq!(a.fields, generic("alpha"));
    assert_eq!(
        b.fields,
        llm("beta"),
        "every field, including is_active=false, is stored"
    );
    assert!(a.created_at.is_some() && a.updated_at.is_some());
    let list = store.list_services().await.unwrap();
    assert_eq!(list.iter().map(|s| s.id).collect::<Vec<_>>(), [a.id, b.id]);

    let mut changed = generic("alpha2");
    changed.name = "Renamed".into();
    changed.method = None;
    let up = store.update_service(a.id, changed.clone()).await.unwrap();
    assert_eq!(up.fields, changed);
    assert_eq!(
        store.get_service(a.id).await.unwrap().unwrap().fields,
        changed
    );
    store.set_service_active(a.id, false).await.unwrap();
    assert!(
        !store
            .get_service(a.id)
            .await
            .unwrap()
            .unwrap()
            .fields
            .is_active
    );

    assert_eq!(
        store.update_service(9999, generic("x")).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.set_service_active(9999, true).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.delete_service(9999).await, Err(StoreError::NotFound));
    assert_eq!(store.get_service(9999).await.unwrap(), None);
    store.delete_service(a.id).await.unwrap();
    assert_eq!(store.get_service(a.id).await.unwrap(), None);
}

/// Names and slugs are unique; the error names the field.
pub async fn uniqueness(store: &dyn Store) {
    let a = store.create_service(generic("one")).await.unwrap();
    let mut same_slug = generic("one");
    same_slug.name = "Other".into();
    assert_eq!(
        store.create_service(same_slug).await,
        Err(StoreError::Conflict("slug"))
    );
    let mut same_name = generic("two");
    same_name.name = "Service one".into();
    assert_eq!(
        store.create_service(same_name.clone()).await,
        Err(StoreError::Conflict("name"))
    );
    let b = store.create_service(generic("two")).await.unwrap();
    assert_eq!(
        store.update_service(b.id, generic("one")).await,
        Err(StoreError::Conflict("name"))
    );
    // Updating a service with its own name and slug is fine.
    store.update_service(a.id, generic("one")).await.unwrap();
}

/// Keys: add (duplicates refused), list in id order, toggle, delete, clear, counts.
pub async fn keys_round_trip(store: &dyn Store) {
    let s = store.create_service(generic("keys")).await.unwrap();
    let k1 = store.add_key(s.id, "sk-one".into(), true).await.unwrap();
    let k2 = store.add_key(s.id, "sk-two".into(), false).await.unwrap();
    assert!(k1.is_active && !k2.is_active, "is_active=false is honoured");
    assert_eq!(
        store.add_key(s.id, "sk-one".into(), true).await,
        Err(StoreError::Conflict("key_value"))
    );
    assert_eq!(
        store.add_key(9999, "x".into(), true).await,
        Err(StoreError::NotFound)
    );
    let keys = store.list_keys(s.id).await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| k.key_value.as_str())
            .collect::<Vec<_>>(),
        ["sk-one", "sk-two"]
    );
    let rec = store.get_service(s.id).await.unwrap().unwrap();
    assert_eq!((rec.key_count, rec.active_key_count), (2, 1));
    assert_eq!(store.list_keys(9999).await, Err(StoreError::NotFound));

    store.set_key_active(k2.id, true).await.unwrap();
    assert!(store.get_key(k2.id).await.unwrap().unwrap().is_active);
    assert_eq!(
        store.set_key_active(9999, true).await,
        Err(StoreError::NotFound)
    );
    store.delete_key(k1.id).await.unwrap();
    assert_eq!(store.delete_key(k1.id).await, Err(StoreError::NotFound));
    store.add_key(s.id, "sk-three".into(), true).await.unwrap();
    assert_eq!(store.clear_keys(s.id).await.unwrap(), 2);
    assert!(store.list_keys(s.id).await.unwrap().is_empty());
    assert_eq!(store.clear_keys(9999).await, Err(StoreError::NotFound));
}

/// Batch import skips keys already stored; deleting a service deletes its keys.
pub async fn batch_and_cascade(store: &dyn Store) {
    let s = store.create_service(generic("batch")).await.unwrap();
    store.add_key(s.id, "k1".into(), true).await.unwrap();
    let out = store
        .add_keys(s.id, vec!["k1".into(), "k2".into(), "k3".into()])
        .await
        .unwrap();
    assert_eq!(
        (out.success_count, out.skipped_count, out.failed_count),
        (2, 1, 0)
    );
    assert_eq!(store.list_keys(s.id).await.unwrap().len(), 3);
    assert_eq!(
        store.add_keys(9999, vec!["x".into()]).await,
        Err(StoreError::NotFound)
    );
    let keys = store.list_keys(s.id).await.unwrap();
    store.delete_service(s.id).await.unwrap();
    for k in keys {
        assert_eq!(
            store.get_key(k.id).await.unwrap(),
            None,
            "keys go with their service"
        );
    }
    assert!(store.load_all().await.unwrap().keys.is_empty());
}

/// Health marks and statistics (deltas add up) are stored.
pub async fn health_and_stats(store: &dyn Store) {
    let s = store.create_service(generic("health")).await.unwrap();
    let k = store.add_key(s.id, "sk-h".into(), true).await.unwrap();
    let health = KeyHealth {
        invalid_reason: Some("upstream answered 401 Unauthorized".into()),
        invalid_at: Some(1_800_000_000_000),
        cooldown_until: Some(1_800_000_060_000),
    };
    store.set_key_health(k.id, health.clone()).await.unwrap();
    assert_eq!(store.get_key(k.id).await.unwrap().unwrap().health, health);
    assert_eq!(
        store.set_key_health(9999, health).await,
        Err(StoreError::NotFound)
    );
    let update = |n| StatsUpdate {
        key_id: k.id,
        requests: n,
        successes: n - 1,
        failures: 1,
        consecutive_failures: 1,
        last_used_at: Some(1_800_000_000_000 + n),
        last_status: Some(429),
        last_error: Some("upstream answered 429 (rate limited)".into()),
        cooldown_until: None,
    };
    store.save_stats(vec![update(5)]).await.unwrap();
    store
        .save_stats(vec![
            update(3),
            StatsUpdate {
                key_id: 9999,
                requests: 1,
                ..Default::default()
            },
        ])
        .await
        .unwrap();
    let st = store.get_key(k.id).await.unwrap().unwrap().stats.clone();
    assert_eq!(
        (st.request_count, st.success_count, st.failure_count),
        (8, 6, 2)
    );
    assert_eq!((st.consecutive_failures, st.last_status), (1, Some(429)));
    assert_eq!(st.last_used_at, Some(1_800_000_000_003));
}

/// An export imported into another (or the same) store keeps everything, twice over.
pub async fn import_is_idempotent(source: &dyn Store, target: &dyn Store) {
    let a = source.create_service(generic("exp-a")).await.unwrap();
    let b = source.create_service(llm("exp-b")).await.unwrap();
    let k = source.add_key(a.id, "ka".into(), false).await.unwrap();
    source.add_key(b.id, "kb".into(), true).await.unwrap();
    source
        .set_key_health(
            k.id,
            KeyHealth {
                invalid_reason: Some("dead".into()),
                invalid_at: Some(1),
                cooldown_until: None,
            },
        )
        .await
        .unwrap();
    source
        .save_stats(vec![StatsUpdate {
            key_id: k.id,
            requests: 7,
            successes: 7,
            ..Default::default()
        }])
        .await
        .unwrap();
    let dump = source.load_all().await.unwrap();
    let first = target.import(dump.clone()).await.unwrap();
    assert_eq!((first.services_created, first.keys_created), (2, 2));
    let second = target.import(dump.clone()).await.unwrap();
    assert_eq!(
        (
            second.services_created,
            second.services_updated,
            second.keys_created,
            second.keys_updated
        ),
        (0, 2, 0, 2)
    );
    let got = target.load_all().await.unwrap();
    let strip = |d: &api_key_rotator::store::Dump| {
        let mut services: Vec<_> = d.services.iter().map(|s| s.fields.clone()).collect();
        services.sort_by(|x, y| x.slug.cmp(&y.slug));
        let mut keys: Vec<_> = d
            .keys
            .iter()
            .map(|k| {
                (
                    k.key_value.clone(),
                    k.is_active,
                    k.health.clone(),
                    k.stats.clone(),
                )
            })
            .collect();
        keys.sort_by(|x, y| x.0.cmp(&y.0));
        (services, keys)
    };
    assert_eq!(strip(&got), strip(&dump));
}

/// Every check of the suite, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::sync::Arc<dyn Store>>,
{
    services_round_trip(&*fresh().await).await;
    uniqueness(&*fresh().await).await;
    keys_round_trip(&*fresh().await).await;
    batch_and_cascade(&*fresh().await).await;
    health_and_stats(&*fresh().await).await;
    import_is_idempotent(&*fresh().await, &*fresh().await).await;
    usage_round_trip(&*fresh().await).await;
    client_keys_round_trip(&*fresh().await).await;
    pages_and_bulk_actions(&*fresh().await).await;
}

/// Pages (filters, search by tail, note and whole key, sorts, cursors), counts,
/// selections and bulk actions, each all or nothing; notes and tails survive a round trip.
pub async fn pages_and_bulk_actions(store: &dyn Store) {
    use api_key_rotator::store::key_query::*;
    let s = store.create_service(generic("pages")).await.unwrap();
    let other = store.create_service(llm("pages-other")).await.unwrap();
    let values: Vec<String> = (0..30).map(|i| format!("sk-page-{i:02}-T{i:03}")).collect();
    store.add_keys(s.id, values.clone()).await.unwrap();
    store
        .add_keys(other.id, vec!["sk-page-00-T000".into()])
        .await
        .unwrap();
    let all = store.list_keys(s.id).await.unwrap();
    let ids: Vec<i64> = all.iter().map(|k| k.id).collect();
    let page = |filter: KeyFilter, sort: Sort, after: Option<Cursor>, limit: usize| PageQuery {
        service_id: s.id,
        filter,
        sort,
        after,
        limit,
    };
    let got = |keys: Vec<api_key_rotator::store::KeyRecord>| {
        keys.iter().map(|k| k.id).collect::<Vec<_>>()
    };
    let first = store
        .page_keys(page(KeyFilter::default(), Sort::default(), None, 10))
        .await
        .unwrap();
    assert_eq!(got(first.clone()), ids[..10]);
    assert_eq!(first[0].key_value, values[0], "values come back plain");
    let after = Cursor {
        value: ids[9],
        id: ids[9],
    };
    let second = store
        .page_keys(page(KeyFilter::default(), Sort::default(), Some(after), 10))
        .await
        .unwrap();
    assert_eq!(got(second), ids[10..20]);
    let desc = Sort {
        by: SortBy::Id,
        desc: true,
    };
    assert_eq!(
        got(store
            .page_keys(page(KeyFilter::default(), desc, None, 2))
            .await
            .unwrap()),
        [ids[29], ids[28]]
    );

    store
        .set_key_note(ids[5], Some("Team Alpha".into()))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key(ids[5])
            .await
            .unwrap()
            .unwrap()
            .note
            .as_deref(),
        Some("Team Alpha")
    );
    assert_eq!(
        store.set_key_note(9999, None).await,
        Err(StoreError::NotFound)
    );
    let q = |text: &str| KeyFilter {
        state: None,
        q: Some(text.into()),
    };
    for (text, want) in [
        ("team alpha", vec![ids[5]]),
        ("T012", vec![ids[12]]),
        ("012", vec![ids[12]]),
        ("sk-page-07-T007", vec![ids[7]]),
        ("page-07", vec![]),
        ("%", vec![]),
        ("_", vec![]),
    ] {
        assert_eq!(
            got(store
                .page_keys(page(q(text), Sort::default(), None, 50))
                .await
                .unwrap()),
            want,
            "q={text}"
        );
    }
    assert_eq!(
        store.count_keys(s.id, q("1")).await.unwrap(),
        3,
        "T001, T011, T021"
    );

    let health = KeyHealth {
        invalid_reason: Some("401".into()),
        invalid_at: Some(1),
        cooldown_until: None,
    };
    store.set_key_health(ids[1], health).await.unwrap();
    let cooling = KeyHealth {
        cooldown_until: Some(i64::MAX / 2),
        ..Default::default()
    };
    store.set_key_health(ids[2], cooling).await.unwrap();
    store.set_key_active(ids[3], false).await.unwrap();
    let state = |st| KeyFilter {
        state: Some(st),
        q: None,
    };
    assert_eq!(
        store
            .select_keys(s.id, Selection::Filter(state(StateFilter::Invalid)))
            .await
            .unwrap(),
        [ids[1]]
    );
    assert_eq!(
        store
            .select_keys(s.id, Selection::Filter(state(StateFilter::Cooling)))
            .await
            .unwrap(),
        [ids[2]]
    );
    assert_eq!(
        store
            .select_keys(s.id, Selection::Filter(state(StateFilter::Disabled)))
            .await
            .unwrap(),
        [ids[3]]
    );
    assert_eq!(
        store
            .count_keys(s.id, state(StateFilter::Active))
            .await
            .unwrap(),
        27
    );
    let failures = Sort {
        by: SortBy::Failures,
        desc: true,
    };
    assert_eq!(
        store
            .page_keys(page(KeyFilter::default(), failures, None, 30))
            .await
            .unwrap()
            .len(),
        30
    );

    // Ids of another service are not touched.
    let foreign = store.list_keys(other.id).await.unwrap()[0].id;
    let sel = Selection::Ids(vec![ids[0], ids[1], foreign, 9999]);
    assert_eq!(
        store
            .bulk_keys(s.id, sel, BulkAction::Disable)
            .await
            .unwrap(),
        [ids[0], ids[1]]
    );
    assert!(store.get_key(foreign).await.unwrap().unwrap().is_active);
    let reset = store
        .bulk_keys(
            s.id,
            Selection::Filter(state(StateFilter::Invalid)),
            BulkAction::Reset,
        )
        .await
        .unwrap();
    assert!(
        reset.is_empty(),
        "disabled keys are not in the invalid filter"
    );
    let back = store
        .bulk_keys(
            s.id,
            Selection::Filter(state(StateFilter::Disabled)),
            BulkAction::Enable,
        )
        .await
        .unwrap();
    assert_eq!(back, [ids[0], ids[1], ids[3]]);
    let reset = store
        .bulk_keys(
            s.id,
            Selection::Filter(KeyFilter::default()),
            BulkAction::Reset,
        )
        .await
        .unwrap();
    assert_eq!(reset.len(), 30);
    assert!(
        store
            .get_key(ids[1])
            .await
            .unwrap()
            .unwrap()
            .health
            .invalid_reason
            .is_none()
    );
    let gone = store
        .bulk_keys(s.id, Selection::Filter(q("9")), BulkAction::Delete)
        .await
        .unwrap();
    assert_eq!(gone, [ids[9], ids[19], ids[29]]);
    assert_eq!(
        store.count_keys(s.id, KeyFilter::default()).await.unwrap(),
        27
    );
    assert_eq!(
        store
            .count_keys(other.id, KeyFilter::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .bulk_keys(9999, Selection::Ids(vec![1]), BulkAction::Delete)
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store
            .page_keys(PageQuery {
                service_id: 9999,
                limit: 1,
                ..Default::default()
            })
            .await,
        Err(StoreError::NotFound)
    );
}

/// Client keys: every field read back (nulls and lists included), a taken hash refused,
/// updates, last use never moved back, deletes.
pub async fn client_keys_round_trip(store: &dyn Store) {
    use api_key_rotator::store::client_keys::ClientKeyFields;
    let fields = ClientKeyFields {
        name: "app ünicode".into(),
        note: "a note".into(),
        is_active: true,
        expires_at: Some(4_000_000_000),
        services: vec!["oai".into(), "gem".into()],
        models: vec!["gpt-4o*".into()],
        rpm: Some(60),
        rpd: None,
        tpd: Some(1_000_000),
        max_streams: Some(2),
    };
    let hash = "ab".repeat(32);
    let k = store
        .create_client_key(fields.clone(), "akr-abcdef".into(), hash.clone())
        .await
        .unwrap();
    assert_eq!(
        (k.fields.clone(), k.prefix.as_str(), k.hash.as_str()),
        (fields.clone(), "akr-abcdef", hash.as_str())
    );
    assert!(
        k.created_at > 1_700_000_000_000 && k.last_used_at.is_none(),
        "{k:?}"
    );
    assert_eq!(
        store
            .create_client_key(fields.clone(), "akr-x".into(), hash.clone())
            .await,
        Err(StoreError::Conflict("secret"))
    );
    let other = store
        .create_client_key(
            ClientKeyFields::default(),
            "akr-other".into(),
            "cd".repeat(32),
        )
        .await
        .unwrap();
    let mut changed = fields.clone();
    changed.rpm = None;
    changed.services.clear();
    changed.is_active = false;
    let k2 = store
        .update_client_key(k.id, changed.clone())
        .await
        .unwrap();
    assert_eq!(k2.fields, changed);
    assert_eq!(
        store.update_client_key(9_999, changed.clone()).await,
        Err(StoreError::NotFound)
    );
    store
        .touch_client_keys(vec![(k.id, 5_000), (other.id, 7_000)])
        .await
        .unwrap();
    store.touch_client_keys(vec![(k.id, 4_000)]).await.unwrap();
    let all = store.list_client_keys().await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![k.id, other.id]
    );
    assert_eq!(all[0].last_used_at, Some(5_000), "never moved back");
    assert_eq!(all[1].last_used_at, Some(7_000));
    store.delete_client_key(k.id).await.unwrap();
    assert_eq!(
        store.delete_client_key(k.id).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.list_client_keys().await.unwrap().len(), 1);
}

/// Rollups add up per hour and key, buckets group and filter, the log keeps its newest
/// entries and pages by id, old hours go.
pub async fn usage_round_trip(store: &dyn Store) {
    use api_key_rotator::store::UsageBatch;
    use api_key_rotator::store::usage::{Counts, LogEntry, RequestQuery, Rollup, UsageQuery};
    use std::sync::Arc;
    let counts = |n: i64| Counts {
        requests: n,
        successes: n,
        tokens_in: 10 * n,
        tokens_out: n,
        ..Counts::default()
    };
    let rollup = |hour: i64, key_id: i64, model: &str, n: i64| Rollup {
        hour,
        service_id: 1,
        key_id,
        model: model.into(),
        client_key_id: 0,
        counts: counts(n),
    };
    let entry = |i: i64, status: u16| LogEntry {
        at: 1_000 + i,
        request_id: format!("r{i}"),
        service_id: 1,
        key_id: 1 + i % 2,
        status,
        path: format!("/p/{i}"),
        attempts: vec![(1, status)],
        model: Some("m\u{e9}\"quoted\"".into()),
        ..LogEntry::default()
    };
    let h = 3_600 * 100;
    let save = |rollups: Vec<Rollup>, entries: Vec<LogEntry>| {
        store.save_usage(Arc::new(UsageBatch {
            rollups,
            entries,
            keep_entries: 4,
            keep_since: 0,
        }))
    };
    save(
        vec![
            rollup(h, 1, "a", 1),
            rollup(h, 2, "a", 2),
            rollup(h + 3_600, 1, "b", 4),
        ],
        (0..3).map(|i| entry(i, 200)).collect(),
    )
    .await
    .unwrap();
    // The same hour, key and model again: added, not replaced.
    save(
        vec![rollup(h, 1, "a", 8)],
        (3..6).map(|i| entry(i, 502)).collect(),
    )
    .await
    .unwrap();
    let q = |group: Vec<&'static str>, bucket: i64| UsageQuery {
        from: h,
        to: h + 7_200,
        bucket,
        group,
        ..UsageQuery::default()
    };
    let hours = store.query_usage(q(vec![], 3_600)).await.unwrap();
    let got: Vec<_> = hours
        .iter()
        .map(|b| (b.start, b.counts.requests, b.counts.tokens_in))
        .collect();
    assert_eq!(got, [(h, 11, 110), (h + 3_600, 4, 40)]);
    let by_key = store
        .query_usage(q(vec!["key", "model"], 86_400))
        .await
        .unwrap();
    let got: Vec<_> = by_key
        .iter()
        .map(|b| (b.key_id, b.model.clone(), b.counts.requests))
        .collect();
    assert_eq!(
        got,
        [
            (Some(1), Some("a".into()), 9),
            (Some(1), Some("b".into()), 4),
            (Some(2), Some("a".into()), 2)
        ]
    );
    assert!(
        by_key
            .iter()
            .all(|b| b.start == h - h % 86_400 && b.service_id.is_none())
    );
    let only_b = UsageQuery {
        model: Some("b".into()),
        ..q(vec![], 3_600)
    };
    assert_eq!(store.query_usage(only_b).await.unwrap().len(), 1);

    let page = |before, status_class| RequestQuery {
        before,
        limit: 3,
        status_class,
        ..RequestQuery::default()
    };
    let first = store.query_requests(page(None, None)).await.unwrap();
    let ids: Vec<_> = first.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["r5", "r4", "r3"], "newest first");
    assert_eq!(first[0].model.as_deref(), Some("m\u{e9}\"quoted\""));
    assert_eq!(first[0].attempts, [(1, 502)]);
    let rest = store
        .query_requests(page(Some(first[2].id), None))
        .await
        .unwrap();
    let ids: Vec<_> = rest.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["r2"], "only the newest 4 are kept");
    assert_eq!(
        store
            .query_requests(page(None, Some(2)))
            .await
            .unwrap()
            .len(),
        1
    );
    let by_id = RequestQuery {
        request_id: Some("r4".into()),
        ..page(None, None)
    };
    assert_eq!(store.query_requests(by_id).await.unwrap()[0].path, "/p/4");

    // Retention: hours before `keep_since` go.
    store
        .save_usage(Arc::new(UsageBatch {
            rollups: vec![],
            entries: vec![],
            keep_entries: 4,
            keep_since: h + 3_600,
        }))
        .await
        .unwrap();
    let left = store.query_usage(q(vec![], 3_600)).await.unwrap();
    assert_eq!(
        left.iter().map(|b| b.start).collect::<Vec<_>>(),
        [h + 3_600]
    );
}
