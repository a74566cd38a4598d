//! Swagger UI at `/docs`, working offline: its stylesheet and script (`assets/swagger-ui/`,
//! from the npm package `swagger-ui-dist`) are compiled in and served under `/docs/`, with the
//! version in their names (so they are cached for good), and the page points it at
//! `/openapi.json`. Its Content-Security-Policy lets it load nothing from elsewhere.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::ErrorBody;
use super::error::ApiError;

/// The vendored Swagger UI's version (assets/swagger-ui/README.md).
macro_rules! swagger_ui_version {
    () => {
        "5.35.0"
    };
}

/// The page's policy: everything from this server only (Swagger UI sets inline styles, and
/// shows images it receives as `data:` or `blob:` URLs).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'";

const PAGE: &str = concat!(
    r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flora API</title>
<link rel="stylesheet" href="docs/swagger-ui-"#,
    swagger_ui_version!(),
    r#".css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle-"#,
    swagger_ui_version!(),
    r#".js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"#
);

/// Starts Swagger UI on this server's document (relative: it works behind a path prefix too).
const INIT: &str = r##"window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
});
"##;

/// A file served under `/docs/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    cache: &'static str,
}

/// Versioned names are cached for a year; `init.js` changes with flora, so it is revalidated.
const FOREVER: &str = "public, max-age=31536000, immutable";

const ASSETS: [Asset; 3] = [
    Asset {
        name: concat!("swagger-ui-", swagger_ui_version!(), ".css"),
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../assets/swagger-ui/swagger-ui.css"),
        cache: FOREVER,
    },
    Asset {
        name: concat!("swagger-ui-bundle-", swagger_ui_version!(), ".js"),
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/swagger-ui/swagger-ui-bundle.js"),
        cache: FOREVER,
    },
    Asset {
        name: "init.js",
        content_type: "text/javascript; charset=utf-8",
        body: INIT.as_bytes(),
        cache: "no-cache",
    },
];

/// This documentation in Swagger UI (`GET /docs`).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "pages",
    responses((status = 200, description = "Swagger UI on this document", content_type = "text/html", body = String))
)]
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

/// A file of the documentation page (`GET /docs/{file}`).
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "pages",
    params(("file" = String, Path, description = "A file of the docs page (Swagger UI's stylesheet and script)")),
    responses(
        (status = 200, description = "The file", content((String = "text/css"), (String = "text/javascript"))),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == file).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no file {file:?} under /docs/: open GET /docs"),
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, asset.cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset() {
        for a in &ASSETS {
            assert!(PAGE.contains(&format!("docs/{}", a.name)), "{}", a.name);
        }
    }
}
