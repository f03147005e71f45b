//! The `api_key` scan of `/llm` bodies (`src/proxy/llm.rs`) against serde_json: when
//! serde_json reads the body as an object, the scan finds the same top-level string
//! member, and the body left after removing it is the same object without it.
#![no_main]

use api_key_rotator::fuzzing::strip_api_keys;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let ours = strip_api_keys(data);
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(data) else {
        return; // not a JSON object: passed on untouched, whatever the scan says
    };
    // serde_json keeps the last of duplicate members; the scan refuses differing ones.
    match ours {
        Ok(Some((value, rest))) => {
            assert_eq!(
                object.get("api_key").and_then(Value::as_str),
                Some(value.as_str())
            );
            object.remove("api_key");
            let left: Value = serde_json::from_slice(&rest).expect("the body left is JSON");
            assert_eq!(
                left,
                Value::Object(object),
                "the body left is the object without api_key"
            );
        }
        Ok(None) => assert!(
            object.get("api_key").and_then(Value::as_str).is_none(),
            "a top-level api_key string was missed"
        ),
        Err(_) => {}
    }
});
