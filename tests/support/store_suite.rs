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
    let st = store.get_key(k.id).await.unwrap().unwrap().stats;
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
}
