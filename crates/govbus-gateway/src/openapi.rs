//! The OpenAPI 3.0 document served at `/openapi.json`.

use serde_json::json;

/// The document, as JSON text; `datasets` are the catalog's dataset names.
pub fn document(datasets: &[&str]) -> String {
    let error = json!({"type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}, "required": ["error", "detail"]});
    let result = json!({
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "status": {"type": "string", "enum": ["accepted", "rejected", "not_acknowledged"]},
            "reason": {"type": "string", "description": "A reason code (`govbus reasons`)."},
            "field": {"type": "string", "nullable": true},
            "id": {"type": "string", "description": "The event id of an accepted record: the CloudEvent's `id`, or a UUIDv7."},
            "detail": {"type": "string"}
        },
        "required": ["index", "status"]
    });
    let batch = json!({
        "type": "object",
        "properties": {
            "dataset": {"type": "string"},
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "not_acknowledged": {"type": "integer"},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/RecordResult"}}
        },
        "required": ["dataset", "accepted", "rejected", "results"]
    });
    let err = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "govbus ingest gateway", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Departments publish record changes to the datasets they own. Records are validated against the data catalog at once; accepted ones are acknowledged by the broker before the response."},
        "components": {
            "securitySchemes": {"department": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": error, "RecordResult": result, "BatchResult": batch}
        },
        "security": [{"department": []}],
        "paths": {
            "/v1/datasets/{dataset}/records": {"post": {
                "summary": "Publish records of one dataset",
                "parameters": [
                    {"name": "dataset", "in": "path", "required": true, "schema": {"type": "string", "enum": datasets},
                     "description": "A dataset of the catalog; a department may publish only the ones it owns (403 otherwise)."},
                    {"name": "Idempotency-Key", "in": "header", "required": false,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]{1,255}$"},
                     "description": "Retrying a request with the same key returns the first answer and publishes nothing again — through any gateway instance, after a restart, for 24 hours. A concurrent duplicate waits for the first answer. 1-255 visible ASCII characters; anything else is refused with 400 (never ignored). The key is never part of an event id."}
                ],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "application/cloudevents-batch+json": {"schema": {"type": "array", "items": {"type": "object"}}}
                }},
                "responses": {
                    "200": {"description": "Processed: per-record results (accepted records are acknowledged by the broker; rejected ones carry a reason code).", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}}},
                    "400": err("The body is not valid JSON, or the Idempotency-Key is malformed."),
                    "401": err("Missing or unknown token."),
                    "403": err("The department does not own the dataset."),
                    "404": err("The dataset is not in the catalog."),
                    "413": err("Too large a body or too many records."),
                    "409": err("The Idempotency-Key was already used for a different request, or a request with it is still in flight."),
                    "429": err("Too many requests in progress; see Retry-After."),
                    "408": err("The body did not arrive within the gateway's body timeout (`body_timeout`)."),
                    "500": err("A fault of the gateway, not of the request (`internal`): the publish task failed, or its answer could not be buffered. Some or all records may already be published, and the Idempotency-Key is released: a retry publishes them again (records without a CloudEvent `id` get new event ids). The operator is alerted by an error log."),
                    "503": {"description": "Not processed now; retry after Retry-After where given. Either the broker did not acknowledge some records — the body is then the batch's per-record results, those records marked `not_acknowledged`; the Idempotency-Key is released, so send again only those records, or the whole batch knowing its accepted records are published again — or the ingest topic does not exist (`topic_missing`), or the gateway is still reading its idempotency keys at start-up (`unavailable`).",
                            "content": {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/BatchResult"}, {"$ref": "#/components/schemas/Error"}]}}}}
                }
            }},
            "/health": {"get": {"security": [], "responses": {"200": {"description": "The process is up."}}}},
            "/ready": {"get": {"security": [], "responses": {"200": {"description": "Connected to the broker."}, "503": {"description": "Not connected."}}}},
            "/metrics": {"get": {"security": [], "responses": {"200": {"description": "Prometheus metrics."}}}}
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    /// Every answer the publish handler can give is documented, the
    /// server's own faults included.
    #[test]
    fn the_publish_operation_documents_every_status_it_answers() {
        let doc: serde_json::Value = serde_json::from_str(&super::document(&["d"])).unwrap();
        let responses = &doc["paths"]["/v1/datasets/{dataset}/records"]["post"]["responses"];
        for status in [
            "200", "400", "401", "403", "404", "408", "409", "413", "429", "500", "503",
        ] {
            assert!(
                responses.get(status).is_some(),
                "{status} is not documented"
            );
        }
    }
}
