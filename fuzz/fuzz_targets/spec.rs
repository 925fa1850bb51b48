//! Workload specs from TOML and JSON text (`starling apply`, the API). Parsing and
//! validation never panic; a spec that validates is canonical (`check`), and it survives
//! printing as TOML and as JSON and postcard encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_protocol::spec::WorkloadSpec;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the format, so one corpus grows both.
    let Some((&format, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = if format & 1 == 0 {
        WorkloadSpec::from_toml(text)
    } else {
        WorkloadSpec::from_json(text)
    };
    let spec = match parsed {
        Ok(spec) => spec,
        Err(errors) => {
            assert!(!errors.errors().is_empty(), "a refusal names a problem");
            let _ = errors.to_string();
            return;
        }
    };
    if let Err(e) = spec.check() {
        panic!("a validated spec is not canonical: {e}");
    }
    let toml = spec.to_toml();
    match WorkloadSpec::from_toml(&toml) {
        Ok(again) => assert_eq!(again, spec, "TOML round trip changed the spec:\n{toml}"),
        Err(e) => panic!("the printed TOML does not parse: {e}\n{toml}"),
    }
    let json = serde_json_text(&spec);
    match WorkloadSpec::from_json(&json) {
        Ok(again) => assert_eq!(again, spec, "JSON round trip changed the spec:\n{json}"),
        Err(e) => panic!("the printed JSON does not parse: {e}\n{json}"),
    }
    let bytes = postcard::to_allocvec(&spec).expect("a spec encodes");
    let back: WorkloadSpec = postcard::from_bytes(&bytes).expect("an encoded spec decodes");
    assert_eq!(back, spec, "postcard round trip changed the spec");
});

fn serde_json_text(spec: &WorkloadSpec) -> String {
    serde_json::to_string(&spec.to_doc()).expect("a spec document prints as JSON")
}
