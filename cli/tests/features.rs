//! Which examples pull in the deployment code: plain handler examples must not
//! build mp-cli (a handler pulls in no Docker code), while the two
//! topology-as-code examples need it and say so with `required-features`, so
//! the build line of scripts/test (`--all-features`) still builds them all.
//!
//! Asked of the real cargo (`cargo tree`, `cargo metadata`, offline: no
//! network), on the workspace's own manifests.

use std::process::Command;

use mp_testkit::repo_root;
use serde_json::Value;

/// Runs the cargo that runs this test with `args` in the workspace root and
/// returns its stdout; panics with its stderr on failure.
fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The packages `cargo tree` lists for mp-examples with these extra arguments
/// (normal and dev dependencies: what building an example compiles).
fn example_deps(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "tree",
        "--offline",
        "-p",
        "mp-examples",
        "-e",
        "normal,dev",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ];
    args.extend_from_slice(extra);
    cargo(&args)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn plain_examples_do_not_build_the_cli_topology_examples_do() {
    let plain = example_deps(&[]);
    assert!(plain.iter().any(|p| p == "mp-sdk"), "{plain:?}");
    assert!(
        !plain.iter().any(|p| p == "mp-cli" || p == "bollard"),
        "mp-examples without features pulls in mp-cli: {plain:?}"
    );
    let deploy = example_deps(&["--features", "deploy"]);
    assert!(deploy.iter().any(|p| p == "mp-cli"), "{deploy:?}");
}

#[test]
fn topology_examples_require_the_deploy_feature() {
    let meta: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--offline",
        "--no-deps",
        "--format-version",
        "1",
    ]))
    .expect("cargo metadata is JSON");
    let examples = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mp-examples")
        .expect("mp-examples in the workspace");
    let required = |name: &str| -> Vec<Value> {
        examples["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("example {name}"))["required-features"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    for name in ["histogram", "replicated"] {
        assert_eq!(required(name), vec![Value::from("deploy")], "{name}");
    }
    for name in ["hello", "faulty", "histogram-leaf", "histogram-merge"] {
        assert!(required(name).is_empty(), "{name}");
    }
    assert_eq!(
        examples["features"]["deploy"],
        serde_json::json!(["mp-sdk/deploy"])
    );
}
