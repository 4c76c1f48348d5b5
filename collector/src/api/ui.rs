//! The web UI: a handful of hand-written files embedded in the binary and
//! served at `/` and `/ui/*`, plus the built-in dashboards it renders. Every
//! page route answers the same `index.html`; the script picks the view from
//! the path. The UI reads data only through the HTTP API. Nothing here loads
//! from elsewhere, and the Content-Security-Policy forbids inline script and
//! any other origin, so label values can never run as code.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the UI consists of.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../../ui/api.js"),
    },
    Asset {
        name: "format.js",
        content_type: JS,
        body: include_bytes!("../../ui/format.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_bytes!("../../ui/chart.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../../ui/dom.js"),
    },
    Asset {
        name: "pages.js",
        content_type: JS,
        body: include_bytes!("../../ui/pages.js"),
    },
    Asset {
        name: "alerts.js",
        content_type: JS,
        body: include_bytes!("../../ui/alerts.js"),
    },
    Asset {
        name: "slos.js",
        content_type: JS,
        body: include_bytes!("../../ui/slos.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/favicon.svg"),
    },
    Asset {
        name: "dashboards/host.json",
        content_type: "application/json",
        body: include_bytes!("../../../dashboards/host.json"),
    },
    Asset {
        name: "dashboards/service.json",
        content_type: "application/json",
        body: include_bytes!("../../../dashboards/service.json"),
    },
];

/// The policy every UI response carries: scripts, styles, images and API
/// calls from this origin only, no inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// Total size of the embedded UI in bytes (bounded by a test).
pub fn embedded_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// Strong ETags, one per asset, from a hash of its bytes (computed once).
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:016x}\"", fnv1a(a.body)))
            .collect()
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return super::api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such UI file: /ui/{name}"),
        );
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // File names carry no version, so browsers revalidate every time; the
    // ETag makes that a 304 without a body.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (StatusCode::OK, h, asset.body).into_response()
}

/// Every page route (`/`, `/hosts/<instance>`, `/probes`, `/slos`,
/// `/slos/<name>`, `/alerts`, `/explore`): the same `index.html`.
pub(super) async fn page(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `/ui/<file>`.
pub(super) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_ui_stays_small() {
        let total = embedded_bytes();
        assert!(total < 300 * 1024, "embedded UI is {total} bytes");
    }

    #[test]
    fn every_script_the_page_loads_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap();
        for part in index.split("src=\"/ui/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
        }
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for part in text.split("from './").skip(1) {
                let name = &part[..part.find('\'').unwrap()];
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports {name}",
                    a.name
                );
            }
            assert!(!text.contains("innerHTML"), "{} writes innerHTML", a.name);
        }
    }

    #[test]
    fn a_matching_etag_gets_304() {
        let mut h = HeaderMap::new();
        let first = serve("app.js", &h);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("nope.js", &h).status(), StatusCode::NOT_FOUND);
    }
}
