//! The checked-in OpenAPI document (docs/openapi.json) must match the code.
//! Regenerate with: UPDATE_OPENAPI=1 cargo test -p nimbus-server --test openapi

#[test]
fn openapi_document_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = nimbus_server::http::openapi_json() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write docs/openapi.json");
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p nimbus-server --test openapi` and commit it"
    );
}

#[test]
fn openapi_document_describes_the_api() {
    let doc: serde_json::Value =
        serde_json::from_str(&nimbus_server::http::openapi_json()).unwrap();
    for path in [
        "/v1/instances",
        "/v1/instances/{name}",
        "/v1/nodes/{name}/assignments",
        "/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["InstanceSpec"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}
