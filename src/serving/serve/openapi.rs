//! The OpenAPI 3.1 document of `flora serve` (`GET /openapi.json`). utoipa builds it from the
//! handlers' `#[utoipa::path]` attributes and the body types of [`super::api`]; the router is
//! made from the same list ([`super::routes::api`]), so a route cannot exist undocumented.

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api::ErrorBody;

/// The name of the admin token's security scheme (`security(("admin_token" = []))` on a path).
pub const ADMIN_TOKEN: &str = "admin_token";

/// The document's frame: info, tags, the security scheme and the shared error schema; the
/// paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flora",
        version = env!("CARGO_PKG_VERSION"),
        description = "flora's image classifier over HTTP (`flora serve`). Every error answer is \
            JSON `{\"error\": \"...\"}` (an unknown path 404, a wrong method 405, included). A \
            browser page from another origin may not POST here (403) unless listed in \
            `serve.allowed_origins`."
    ),
    modifiers(&AdminToken),
    components(schemas(ErrorBody)),
    tags(
        (name = "predict", description = "Classify an uploaded image"),
        (name = "status", description = "Health, loaded models, metrics"),
        (name = "admin", description = "Needs the admin token (`FLORA_ADMIN_TOKEN`)"),
        (name = "pages", description = "The upload page and this documentation"),
    )
)]
pub struct Frame;

/// Adds the bearer scheme of the admin endpoints.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token: FLORA_ADMIN_TOKEN, else serve.admin_token in flora.toml",
                    ))
                    .build(),
            ),
        );
    }
}

/// The finished document as JSON, made once when the router is built.
#[derive(Clone)]
pub struct Json(pub Bytes);

impl Json {
    pub fn new(doc: &Document) -> Self {
        let text = serde_json::to_vec_pretty(doc).expect("an OpenAPI document serializes");
        Self(Bytes::from(text))
    }
}

/// This OpenAPI document (`GET /openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "pages",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object))
)]
pub async fn document(Extension(doc): Extension<Json>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        doc.0,
    )
        .into_response()
}
