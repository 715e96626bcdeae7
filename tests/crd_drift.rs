//! The committed CRDs (`crds/abcrun.yaml` and the Helm chart's copy) equal what
//! `abc-operator crd` generates from the Rust types; the bench's `bench/constants.json` equals
//! what `protocol::constants_json` generates from the Rust constants.
//!
//! `UPDATE_CRDS=1 cargo test --test crd_drift` rewrites the CRD files instead of checking them,
//! `UPDATE_CONSTANTS=1` the constants.

use std::path::Path;

const COMMITTED: [&str; 2] = ["crds/abcrun.yaml", "charts/abc-operator/crds/abcrun.yaml"];

#[test]
fn committed_crds_equal_the_generated_crd() {
    let generated = abc_operator::api::crd_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    for relative in COMMITTED {
        let path = root.join(relative);
        if update {
            std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {relative}: {e}"));
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()) + 1);
            panic!(
                "{relative} differs from the CRD the binary generates (first at line {line}): \
                 run `make crds` and commit the result"
            );
        }
    }
}

#[test]
fn committed_bench_constants_equal_the_generated_ones() {
    let generated = abc_operator::protocol::constants_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/constants.json");
    if std::env::var_os("UPDATE_CONSTANTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("writing bench/constants.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "bench/constants.json differs from protocol::constants_json(): run \
         `UPDATE_CONSTANTS=1 cargo test --test crd_drift` and commit the result\n\
         committed:\n{committed}\ngenerated:\n{generated}"
    );
}
