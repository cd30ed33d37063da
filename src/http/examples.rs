//! Examples for every operation's bodies and errors in the OpenAPI document.
//!
//! Error examples are rendered by the code that renders real errors ([`ApiError::problem`]),
//! so the documentation cannot show a problem the API never sends; each error response
//! lists every cause of its status that applies to the operation. Bodies without an example
//! of their own show their schema's example at the operation, where Swagger UI's "Example
//! Value" and client generators look for it.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::Modify;
use utoipa::openapi::example::{Example, ExampleBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, OpenApi as Document, RefOr};

use super::error::{ApiError, RateLimitHeaders};
use crate::auth::AuthError;
use crate::policy::InputViolation;

const PROBLEM_JSON: &str = "application/problem+json";

/// Fills in the examples of every operation.
pub struct OperationExamples;

impl Modify for OperationExamples {
    fn modify(&self, openapi: &mut Document) {
        let schema_examples = schema_examples(openapi);
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let causes = error_causes(operation);
                if let Some(body) = &mut operation.request_body {
                    for content in body.content.values_mut() {
                        show_schema_example(content, &schema_examples);
                    }
                }
                for (status, response) in &mut operation.responses.responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    for (media_type, content) in &mut response.content {
                        if media_type == PROBLEM_JSON {
                            content.examples = problem_examples(status, &causes);
                        } else {
                            show_schema_example(content, &schema_examples);
                        }
                    }
                }
            }
        }
    }
}

/// The example of each component schema that has one.
fn schema_examples(openapi: &Document) -> BTreeMap<String, Value> {
    let Some(components) = &openapi.components else {
        return BTreeMap::new();
    };
    components
        .schemas
        .iter()
        .filter_map(|(name, schema)| {
            let schema = serde_json::to_value(schema).ok()?;
            let example = schema
                .get("examples")
                .and_then(|e| e.get(0))
                .or_else(|| schema.get("example"))?;
            Some((format!("#/components/schemas/{name}"), example.clone()))
        })
        .collect()
}

/// Shows the referenced schema's example on `content`, unless it has its own.
fn show_schema_example(content: &mut Content, schema_examples: &BTreeMap<String, Value>) {
    if content.example.is_some() || !content.examples.is_empty() {
        return;
    }
    if let Some(RefOr::Ref(reference)) = &content.schema {
        content.example = schema_examples.get(&reference.ref_location).cloned();
    }
}

/// Every error an operation can answer with, named; which apply depends on what the
/// operation takes (a body, query parameters).
fn error_causes(operation: &Operation) -> Vec<Cause> {
    let takes_body = operation.request_body.is_some();
    let takes_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| serde_json::to_value(p).is_ok_and(|p| p["in"] == "query"));
    let mut causes = common_causes();
    if takes_query {
        causes.push((
            "invalid_parameter",
            "A query parameter is out of range",
            ApiError::InvalidParameter(
                "Failed to deserialize query string: limit: invalid digit found in string".into(),
            ),
        ));
    }
    if takes_body {
        causes.extend(body_causes());
    }
    causes
}

/// A named error: its name, what it means, an example.
type Cause = (&'static str, &'static str, ApiError);

/// The errors any operation can answer with.
fn common_causes() -> Vec<Cause> {
    vec![
        (
            "malformed_authorization",
            "The Authorization header is not one `Bearer <token>`",
            ApiError::MalformedAuthorization("more than one Authorization header"),
        ),
        ("missing_token", "No bearer token", ApiError::MissingToken),
        (
            "invalid_token",
            "The token is expired, forged, for another audience or from an untrusted issuer \
             (the reason is in the audit trail, never in the answer)",
            ApiError::InvalidToken(AuthError::UnknownKey),
        ),
        (
            "insufficient_scope",
            "The policy does not allow this caller",
            ApiError::Forbidden(String::new()),
        ),
        ("not_found", "No such resource", ApiError::NotFound),
        (
            "queue_unavailable",
            "Redis did not answer in time; nothing was changed",
            ApiError::Unavailable {
                what: "the queue",
                detail: String::new(),
                retry_after_seconds: 1,
            },
        ),
        (
            "keys_unavailable",
            "The issuer's signing keys cannot be fetched",
            ApiError::Unavailable {
                what: "token verification",
                detail: String::new(),
                retry_after_seconds: 5,
            },
        ),
    ]
}

/// The errors of an operation that takes a body.
fn body_causes() -> [Cause; 9] {
    [
        (
            "invalid_body",
            "The body is not the documented JSON object",
            ApiError::InvalidBody(
                "invalid JSON body: expected `,` or `}` at line 1 column 24".into(),
            ),
        ),
        (
            "payload_too_large",
            "The body, or the workflow's input, is larger than its limit",
            ApiError::PayloadTooLarge { limit: 65_536 },
        ),
        (
            "request_timeout",
            "The body did not arrive within server.request_timeout_ms",
            ApiError::RequestTimeout,
        ),
        (
            "unsupported_media_type",
            "The body is not application/json",
            ApiError::UnsupportedMediaType,
        ),
        (
            "invalid_input",
            "The input fails the workflow's JSON Schema",
            ApiError::InvalidInput(vec![InputViolation {
                path: "/amount_cents".into(),
                message: "-5 is less than the minimum of 1".into(),
            }]),
        ),
        (
            "idempotency_key_reused",
            "The Idempotency-Key was used with another request",
            ApiError::IdempotencyKeyReused,
        ),
        (
            "request_pending",
            "A retry of a request still held for its audit record (audit.fail_closed)",
            ApiError::RequestPending {
                request_id: "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b".into(),
                retry_after_seconds: 1,
            },
        ),
        (
            "rate_limited",
            "A rate limit of the workflow is exhausted",
            ApiError::RateLimited {
                policy: "caller",
                retry_after_seconds: 12,
                headers: RateLimitHeaders::default(),
            },
        ),
        (
            "backlog_full",
            "The workflow's backlog is full (backpressure)",
            ApiError::Unavailable {
                what: "the workflow's queue",
                detail: String::new(),
                retry_after_seconds: 5,
            },
        ),
    ]
}

/// The named problem examples of one response status.
fn problem_examples(status: &str, causes: &[Cause]) -> BTreeMap<String, RefOr<Example>> {
    causes
        .iter()
        .map(|(name, summary, error)| (name, summary, error.problem()))
        .filter(|(_, _, problem)| problem.status.to_string() == status)
        .filter_map(|(name, summary, problem)| {
            let value = serde_json::to_value(problem).ok()?;
            let example = ExampleBuilder::new()
                .summary(*summary)
                .value(Some(value))
                .build();
            Some(((*name).to_owned(), RefOr::T(example)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        serde_json::to_value(crate::http::openapi::document()).unwrap_or_default()
    }

    /// Each example of a media type: its own `example`, or each of its named `examples`.
    fn examples_of(content: &Value) -> Vec<Value> {
        let mut all: Vec<Value> = content.get("example").cloned().into_iter().collect();
        if let Some(named) = content.get("examples").and_then(Value::as_object) {
            all.extend(named.values().map(|e| e["value"].clone()));
        }
        all
    }

    /// Every body of every operation (request, success and error) has an example, and
    /// each example is valid against the body's schema.
    #[test]
    fn every_body_and_error_of_every_operation_has_a_valid_example() {
        let doc = document();
        let components = doc["components"].clone();
        let mut checked = 0;
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        assert!(!paths.is_empty());
        for (path, item) in &paths {
            for (method, operation) in item.as_object().into_iter().flatten() {
                // (request or status, media type, content)
                let mut bodies: Vec<(String, String, Value)> = Vec::new();
                for (media_type, content) in operation["requestBody"]["content"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    bodies.push(("request".into(), media_type.clone(), content.clone()));
                }
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    for (media_type, content) in
                        response["content"].as_object().into_iter().flatten()
                    {
                        bodies.push((status.clone(), media_type.clone(), content.clone()));
                    }
                }
                for (what, media_type, content) in bodies {
                    let examples = examples_of(&content);
                    assert!(
                        !examples.is_empty(),
                        "{method} {path}: the {what} body has no example"
                    );
                    let mut schema = content["schema"].clone();
                    if let Some(object) = schema.as_object_mut() {
                        object.insert("components".into(), components.clone());
                    }
                    let validator = jsonschema::validator_for(&schema)
                        .unwrap_or_else(|e| panic!("{method} {path} {what}: schema: {e}"));
                    for example in examples {
                        if let Err(e) = validator.validate(&example) {
                            panic!("{method} {path}: the {what} example {example} is invalid: {e}");
                        }
                        if media_type == PROBLEM_JSON {
                            assert_eq!(example["status"].to_string(), what, "{method} {path}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 40, "only {checked} examples checked");
    }

    /// A status with several causes shows each: the trigger's 422 has both.
    #[test]
    fn an_error_status_lists_each_of_its_causes() {
        let doc = document();
        let examples = &doc["paths"]["/v1/workflows/{workflow}/executions"]["post"]["responses"]["422"]
            ["content"][PROBLEM_JSON]["examples"];
        assert_eq!(examples["invalid_input"]["value"]["code"], "invalid_input");
        assert_eq!(
            examples["invalid_input"]["value"]["errors"][0]["path"],
            "/amount_cents"
        );
        assert_eq!(
            examples["idempotency_key_reused"]["value"]["code"],
            "idempotency_key_reused"
        );
        // An operation without a body does not pretend to refuse one.
        let audit_400 = &doc["paths"]["/v1/audit"]["get"]["responses"]["400"]["content"]
            [PROBLEM_JSON]["examples"];
        assert!(audit_400.get("invalid_parameter").is_some());
        assert!(audit_400.get("invalid_body").is_none());
    }
}
