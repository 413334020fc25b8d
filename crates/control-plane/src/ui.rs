//! The web view (`/ui`, read-only): one page, its script and its style,
//! compiled into the binary (no build step, nothing fetched from elsewhere).
//! The script reads /fleet and /edges from the same origin; the operator
//! guard in front of every admin path already refuses a foreign Host or
//! Origin, and the headers here forbid everything else a page could load.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Scripts and styles from this origin only, fetches to it only, no
/// framing, no forms, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, or None when the path is not the web view's.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP, "text/javascript; charset=utf-8"),
        "/ui/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets_and_sets_no_cors() {
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css"] {
            let r = asset(path).unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(
                h["content-security-policy"]
                    .to_str()
                    .unwrap()
                    .contains("script-src 'self'")
            );
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert!(
                h.keys().all(|k| !k.as_str().starts_with("access-control-")),
                "{path}"
            );
        }
        assert!(asset("/ui/other").is_none() && asset("/uix").is_none());
        // Nothing is parsed as HTML from the API's data, and nothing inline.
        assert!(!APP.contains("innerHTML") && !APP.contains("eval("));
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(INDEX.contains(r#"<script src="/ui/app.js">"#));
    }
}
