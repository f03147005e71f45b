//! Admin JSON (`src/admin/json.rs`, `src/service.rs`): any body is parsed or refused with
//! a 400, its fields read with the same accessors the handlers use, and a service built
//! from it validated, without a panic.
#![no_main]

use api_key_rotator::fuzzing::JsonBody;
use api_key_rotator::service;
use api_key_rotator::store::ServiceFields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = JsonBody::parse(data) else {
        return;
    };
    for field in [
        "name",
        "slug",
        "config_type",
        "key_value",
        "note",
        "action",
        "target_url",
    ] {
        let _ = json.opt_str(field);
    }
    let _ = json.opt_bool("is_active");
    let _ = json.opt_i64("max_retries");
    let _ = json.unknown_field(&["name", "slug"]);
    if let Ok(fields) = serde_json::from_slice::<ServiceFields>(data) {
        let _ = service::check_identity(&fields);
        let _ = service::spec(&fields);
    }
});
