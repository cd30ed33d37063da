//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! Routes are registered through [`api_router`] together with their documentation, so the
//! served API and the document cannot drift; `openapi/openapi.json` is this document,
//! committed, and a test fails when it is stale (`stepgate openapi --check`).

use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::examples::OperationExamples;
use super::routes::{audit, dead_letters, executions, health, metrics, requests, workflows};
use crate::state::AppState;

/// Where the committed copy lives, relative to the repository root.
pub const COMMITTED_PATH: &str = "openapi/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stepgate",
        description = "Starts AWS Step Functions executions for authenticated services: OIDC bearer tokens, \
                       per-workflow policy, a durable Redis queue, and a signed audit trail.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerScheme),
    // Referenced by a query parameter (`GET /v1/audit?event=`), which does not collect it.
    components(schemas(crate::audit::EventKind)),
    tags(
        (name = "executions", description = "Trigger workflow executions"),
        (name = "requests", description = "Follow accepted triggers"),
        (name = "health", description = "Probes for orchestrators"),
        (name = "admin", description = "Operate the gateway: dead letters (callers allowed by the `[admin]` policy)"),
        (name = "audit", description = "Read the signed audit trail (callers allowed by the `[audit_readers]` policy)"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the operations refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An OAuth 2.0 access token (RFC 9068 JWT) from one of the configured OpenID \
                         providers, e.g. obtained by the client_credentials grant.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation: the document describes all of them, wherever they
/// are served.
pub fn api_router() -> OpenApiRouter<AppState> {
    caller_routes().merge(operator_routes())
}

/// The routes of the API listener for callers (and load balancers: `/healthz`).
fn caller_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(executions::create_execution))
        .routes(routes!(workflows::list_workflows))
        .routes(routes!(requests::get_request))
        .routes(routes!(dead_letters::list_dead_letters))
        .routes(routes!(dead_letters::replay_dead_letter))
        .routes(routes!(dead_letters::purge_dead_letter))
        .routes(routes!(audit::list_audit_records))
        .routes(routes!(health::get_health))
}

/// The routes for operators' tools: on the operations listener when `server.ops_listen`
/// is set, else on the API listener too.
fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::get_readiness))
        .routes(routes!(metrics::get_metrics))
}

/// The operations listener's routes: `/healthz`, `/readyz`, `/metrics`.
pub fn ops_routes() -> axum::Router<AppState> {
    operator_routes()
        .routes(routes!(health::get_health))
        .split_for_parts()
        .0
}

/// The API listener's routes (without the operator routes when they have a listener of
/// their own) and the whole document, with every operation's examples filled in (after the
/// routes are registered: `#[openapi(modifiers)]` runs before there are any paths).
pub fn router_and_document(separate_ops: bool) -> (axum::Router<AppState>, Document) {
    let (router, mut document) = api_router().split_for_parts();
    OperationExamples.modify(&mut document);
    let router = if separate_ops {
        caller_routes().split_for_parts().0
    } else {
        router
    };
    (router, document)
}

/// The document, as served at `/openapi.json`.
pub fn document() -> Document {
    router_and_document(false).1
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_json() -> Result<String, serde_json::Error> {
    document().to_pretty_json().map(|json| json + "\n")
}
