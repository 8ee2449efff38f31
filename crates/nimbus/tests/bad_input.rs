//! End-to-end: malformed or impossible requests get a 4xx with an actionable message in
//! the one error shape, change nothing, and never crash the server.

mod common;

use common::*;
use serde_json::Value;

fn assert_error(resp: (u16, Value), status: u16, needle: &str) {
    let (code, body) = resp;
    assert_eq!(code, status, "body: {body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(body["error"]["code"].is_string(), "error shape: {body}");
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "message {msg:?} should mention {needle:?}"
    );
}

const GOOD: &str =
    r#"{"name":"ok","spec":{"command":["sleep","300"],"cpu_millis":100,"memory_mib":32}}"#;

#[test]
fn api_rejects_bad_requests_with_clear_4xx() {
    let c = TestCluster::up("t-bad", &[]);
    let post = |body: &str| c.http("POST", "/v1/instances", Some(body));

    assert_error(post("{not json"), 400, "json");
    assert_error(
        post(
            r#"{"name":"a","spec":{"command":["x"],"cpu_millis":100,"memory_mib":32,"memroy":1}}"#,
        ),
        400,
        "unknown field `memroy`",
    );
    assert_error(
        post(r#"{"name":"a","spec":{"command":["x"],"cpu_millis":100,"memory_mib":-1}}"#),
        400,
        "memory_mib",
    );
    assert_error(
        post(r#"{"name":"a","spec":{"command":["x"],"cpu_millis":100,"memory_mib":99999999999}}"#),
        400,
        "too large",
    );
    assert_error(
        post(r#"{"name":"a","spec":{"command":[],"cpu_millis":100,"memory_mib":32}}"#),
        400,
        "command is empty",
    );
    assert_error(
        post(r#"{"name":"Bad_Name","spec":{"command":["x"],"cpu_millis":100,"memory_mib":32}}"#),
        400,
        "invalid",
    );
    assert_error(
        post(r#"{"name":"huge","spec":{"command":["x"],"cpu_millis":100,"memory_mib":60000000}}"#),
        422,
        "largest node",
    );

    // Duplicate name: same spec is idempotent, a different spec is a conflict.
    assert_eq!(post(GOOD).0, 201);
    assert_eq!(post(GOOD).0, 200);
    assert_error(
        post(r#"{"name":"ok","spec":{"command":["sleep","1"],"cpu_millis":100,"memory_mib":32}}"#),
        409,
        "different spec",
    );

    // Unknown objects and endpoints.
    assert_error(c.http("GET", "/v1/instances/nope", None), 404, "not found");
    assert_error(c.http("GET", "/v1/nodes/nope", None), 404, "not found");
    assert_error(
        c.http("POST", "/v1/instances/nope/stop", None),
        404,
        "not found",
    );
    assert_error(c.http("GET", "/v1/nowhere", None), 404, "not found");
    assert_error(c.http("GET", "/v1/instances?limit=0", None), 400, "limit");
    assert_error(
        c.http("GET", "/v1/instances?state=sleepy", None),
        400,
        "unknown state",
    );
    assert_error(
        c.http("GET", "/v1/instances?colour=red", None),
        400,
        "unknown field",
    );

    // Actions in the wrong state are refused with 409 and change nothing.
    c.wait_state("ok", "running");
    assert_error(
        c.http("POST", "/v1/instances/ok/start", None),
        409,
        "cannot start",
    );
    assert_eq!(c.http("POST", "/v1/instances/ok/stop", None).0, 200);
    c.wait_state("ok", "stopped");
    assert_error(
        c.http("POST", "/v1/instances/ok/stop", None),
        409,
        "already",
    );
    assert_eq!(c.instance("ok")["state"], "stopped");

    // Nothing rejected above was created, and the server is still serving.
    let (code, list) = c.http("GET", "/v1/instances", None);
    assert_eq!(code, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ok"]);
}

#[test]
fn cli_reports_bad_input_with_nonzero_exit() {
    let c = TestCluster::up("t-badcli", &[]);
    let fails = |args: &[&str], needle: &str| {
        let out = c.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(needle),
            "{args:?}: stderr {err:?} should contain {needle:?}"
        );
    };
    fails(
        &["instance", "create", "x", "--memory", "-1", "--", "true"],
        "negative",
    );
    fails(
        &["instance", "create", "x", "--memory", "10Pi", "--", "true"],
        "too large",
    );
    fails(
        &["instance", "create", "x", "--cpu", "lots", "--", "true"],
        "not a number",
    );
    fails(&["instance", "create", "x"], "no command");
    fails(&["instance", "create", "UPPER", "--", "true"], "invalid");
    fails(
        &[
            "instance",
            "create",
            "x",
            "--restart",
            "sometimes",
            "--",
            "true",
        ],
        "on-failure",
    );
    fails(&["instance", "show", "ghost"], "not found");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[instance]]\nname = \"web\"\ncpu = 0.5\nmemory = \"64Mi\nrestart = 1\n",
    )
    .unwrap();
    fails(&["apply", "-f", bad.to_str().unwrap()], "bad.toml:4:");
    std::fs::write(
        &bad,
        "[[instance]]\nname = \"web\"\ncpu = 0.5\nmemory = \"64Mi\"\nmemroy = 3\n",
    )
    .unwrap();
    fails(&["apply", "-f", bad.to_str().unwrap()], "memroy");
    fails(
        &["apply", "-f", "/nonexistent.toml"],
        "reading /nonexistent.toml",
    );

    assert_eq!(
        c.cli_json(&["instance", "list"]).as_array().unwrap().len(),
        0
    );

    // Pointing at no server is an error a person can act on.
    let out = std::process::Command::new(BIN)
        .args(["instance", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the nimbus server"));
}
