//! The console's web page: `GET /` and `GET /assets/{name}`, served from bytes compiled into the
//! binary.
//!
//! A gateway host has no internet and an operator should not run a build step, so the page is
//! plain HTML, CSS and JavaScript in `assets/` (with uPlot 1.6.32 vendored for the trend chart,
//! its MIT licence beside it), included with `include_bytes!`. The page is one client of the JSON
//! API (`api.rs`) and the stream; it has no routes of its own beyond its files. `api.rs` serves
//! `/` through [`index`], with the first screen's API answers inline so the first paint waits
//! for no request of the page's own.

use axum::extract::{Path, Query, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One file of the page: its name under `/assets/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// FNV-1a of `bytes`, computed at compile time: the asset's ETag, so a browser revalidating
/// (`no-cache`) gets a bodiless 304 instead of the file again on every load of the page.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file under `/assets/`. The page is `index.html`, also served at `/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: HTML,
        bytes: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: CSS,
        bytes: include_bytes!("assets/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: JS,
        bytes: include_bytes!("assets/console.js"),
    },
    Asset {
        name: "trend.js",
        content_type: JS,
        bytes: include_bytes!("assets/trend.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: JS,
        bytes: include_bytes!("assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: CSS,
        bytes: include_bytes!("assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: TEXT,
        bytes: include_bytes!("assets/uPlot.LICENSE"),
    },
];

/// Scripts and styles only from the console itself (uPlot sets inline styles on its canvas, so
/// inline styles are allowed); never framed, so a login form cannot be overlaid by another site.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'";

/// The routes of the page's files, to merge into the console's router (whatever its state
/// type); `/` is the console's (`api.rs`), which knows what to put on the first screen.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/assets/:name", get(asset))
}

/// Where `index.html` takes the first screen's data.
const FIRST_SCREEN_MARK: &str = "<!--first-screen-->";

/// The files `index.html` loads, whose URLs the page gets versioned (`?v=` their ETag).
const VERSIONED: &[&str] = &["console.css", "trend.js", "console.js"];

/// `index.html` with each file it loads named `/assets/NAME?v=HASH`. A versioned URL is served
/// `immutable`, so a browser that has it loads the page without asking again: a revalidation
/// (`no-cache`, a 304) is still a round trip before the stylesheet applies and the scripts
/// run. An upgrade changes the hash, hence the URL, so it still shows at once.
fn versioned_html() -> &'static str {
    static HTML_V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HTML_V.get_or_init(|| {
        let mut html = find("index.html")
            .map(|a| String::from_utf8_lossy(a.bytes).into_owned())
            .unwrap_or_default();
        for name in VERSIONED {
            if let Some(a) = find(name) {
                html = html.replace(
                    &format!("\"/assets/{name}\""),
                    &format!("\"/assets/{name}?v={:016x}\"", fnv1a(a.bytes)),
                );
            }
        }
        html
    })
}

/// The page, with `first_screen` (a JSON object: `me`, `zones`, `alarms`, `gateways`, `audit`,
/// each what its `/api/...` would answer) inline as a data block the script reads instead of
/// asking; without it (no right to read), the page asks the API as before. A data block is
/// never executed (the CSP allows no inline script anyway); `<` is written `\u003c` so no
/// string from a device can close the element.
pub fn index(first_screen: Option<&str>) -> Response {
    let html = versioned_html();
    let block = first_screen.map_or(String::new(), |json| {
        format!(
            "<script type=\"application/json\" id=\"first-screen\">{}</script>",
            json.replace('<', "\\u003c")
        )
    });
    let mut r = (StatusCode::OK, html.replacen(FIRST_SCREEN_MARK, &block, 1)).into_response();
    headers(r.headers_mut(), HTML, false);
    r
}

/// The header the page puts on every request it makes with `fetch`.
pub const PAGE_MARK: (&str, &str) = ("x-requested-with", "emberwatch-page");

/// A 401 to the page's own requests goes without its `WWW-Authenticate: Basic` challenge:
/// with it, the browser holds the request and pops up its own password dialog, so the page
/// could neither say "log in first" nor offer its login form. Scripts (curl) still get the
/// challenge. Layered over the whole console router.
pub async fn unchallenged(req: Request, next: Next) -> Response {
    let from_page = req
        .headers()
        .get(PAGE_MARK.0)
        .is_some_and(|v| v.as_bytes() == PAGE_MARK.1.as_bytes());
    let mut r = next.run(req).await;
    if from_page && r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

/// `?v=`: the version the page asked for (see [`versioned_html`]).
#[derive(serde::Deserialize)]
struct Version {
    v: Option<String>,
}

async fn asset(
    Path(name): Path<String>,
    Query(version): Query<Version>,
    req: axum::http::HeaderMap,
) -> Response {
    serve(&name, version.v.as_deref(), req.get(header::IF_NONE_MATCH))
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The file `name`; `version`: the `?v=` it was asked with, which makes it `immutable` when
/// it is this file's own (an older page's URL gets the file as it is now, revalidated).
fn serve(name: &str, version: Option<&str>, if_none_match: Option<&HeaderValue>) -> Response {
    let Some(a) = find(name) else {
        return (StatusCode::NOT_FOUND, format!("no asset named {name:?}\n")).into_response();
    };
    let hash = format!("{:016x}", fnv1a(a.bytes));
    let etag = format!("\"{hash}\"");
    let mut r = if if_none_match.is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, a.bytes).into_response()
    };
    let h = r.headers_mut();
    headers(h, a.content_type, version == Some(hash.as_str()));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

/// `immutable`: the URL names this very content (its hash), so it is kept a year unasked.
fn headers(h: &mut axum::http::HeaderMap, content_type: &'static str, immutable: bool) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Otherwise (the page itself, an unversioned URL) the files change only with the binary;
    // revalidating is cheap (a 304 by ETag) and an upgrade shows at once.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The `/assets/` names a file of the page refers to.
    fn refs(file: &str) -> Vec<String> {
        let text = std::str::from_utf8(find(file).expect(file).bytes).expect("utf-8");
        text.split("/assets/")
            .skip(1)
            .map(|part| part.chars().take_while(|c| *c != '"').collect())
            .collect()
    }

    /// Every file the page refers to is served: a missing one would leave the wall board blank.
    /// The page itself loads one stylesheet and two scripts; the trend loads uPlot when a chart
    /// is first drawn.
    #[test]
    fn every_file_the_page_loads_is_an_asset() {
        let page = refs("index.html");
        assert_eq!(page, ["console.css", "trend.js", "console.js"]);
        let trend = refs("trend.js");
        assert_eq!(trend, ["uPlot.min.css", "uPlot.iife.min.js"]);
        for name in page.iter().chain(&trend) {
            assert!(
                find(name).is_some(),
                "the page loads /assets/{name}, not served"
            );
        }
        assert!(find("uPlot.LICENSE").is_some());
    }

    /// The first screen goes in once, where the page reads it, with every `<` escaped: an
    /// alarm message holding `</script>` cannot end the block. Without it, no block.
    #[test]
    fn the_first_screen_is_inline_and_cannot_close_its_block() {
        let body = |r: Response| async move {
            let b = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .expect("body");
            String::from_utf8(b.to_vec()).expect("utf-8")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let json = r#"{"alarms":[{"message":"</script><script>alert(1)</script>"}]}"#;
        let page = rt.block_on(body(index(Some(json))));
        assert_eq!(page.matches("id=\"first-screen\"").count(), 1);
        assert!(page.contains(
            r#"<script type="application/json" id="first-screen">{"alarms":[{"message":"\u003c/script>\u003cscript>alert(1)\u003c/script>"}]}</script>"#
        ), "{page}");
        assert!(!page.contains(FIRST_SCREEN_MARK));
        let bare = rt.block_on(body(index(None)));
        assert!(!bare.contains("first-screen\""), "{bare}");
        assert!(!bare.contains(FIRST_SCREEN_MARK));
        assert!(bare.contains("<title>emberwatch console</title>"));
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Over real HTTP: the page at `/` with its content type and CSP, a script with its own, the
    /// page's versioned URLs kept (`immutable`), and a 404 naming the unknown asset.
    #[tokio::test]
    async fn serves_page_assets_and_404() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let app: Router = routes().route("/", axum::routing::get(|| async { index(None) }));
        tokio::spawn(async move { axum::serve(l, app).await });

        let page = get(addr, "/").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("content-type: text/html; charset=utf-8"));
        assert!(page.contains("content-security-policy: default-src 'self'"));
        assert!(page.contains("<title>emberwatch console</title>"));

        let js = get(addr, "/assets/console.js").await;
        assert!(js.starts_with("HTTP/1.1 200"));
        assert!(js.contains("content-type: text/javascript; charset=utf-8"));
        assert!(js.contains("new EventSource(\"/api/stream\")"));
        assert!(js.contains("cache-control: no-cache"), "{js}");

        // The page names each file it loads with its version; that URL is kept unasked, an
        // older version's is revalidated.
        for name in VERSIONED {
            let hash = format!("{:016x}", fnv1a(find(name).expect(name).bytes));
            let url = format!("/assets/{name}?v={hash}");
            assert!(
                page.contains(&format!("\"{url}\"")),
                "{name} not versioned: {page}"
            );
            let file = get(addr, &url).await;
            assert!(file.starts_with("HTTP/1.1 200"), "{file}");
            assert!(
                file.contains("cache-control: public, max-age=31536000, immutable"),
                "{file}"
            );
            let old = get(addr, &format!("/assets/{name}?v=0123456789abcdef")).await;
            assert!(old.starts_with("HTTP/1.1 200"), "{old}");
            assert!(old.contains("cache-control: no-cache"), "{old}");
        }
        assert!(!page.contains("\"/assets/console.js\""), "{page}");

        // Revalidating with the ETag it was given: a 304 without the file.
        let etag = js
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .expect("an etag")
            .trim()
            .to_string();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET /assets/console.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let again = String::from_utf8_lossy(&out);
        assert!(again.starts_with("HTTP/1.1 304"), "{again}");
        assert!(!again.contains("EventSource"), "{again}");

        let missing = get(addr, "/assets/..%2Fmod.rs").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(
            missing.contains("no asset named \"../mod.rs\""),
            "{missing}"
        );
    }

    /// The page's requests get a bare 401; a script's keep the Basic challenge.
    #[tokio::test]
    async fn a_401_to_the_page_carries_no_basic_challenge() {
        let app: Router = Router::new()
            .route(
                "/api/ack",
                axum::routing::get(|| async {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"x\"")],
                        "log in",
                    )
                }),
            )
            .layer(axum::middleware::from_fn(unchallenged));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        let ask = |mark: bool| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let extra = if mark {
                "X-Requested-With: emberwatch-page\r\n"
            } else {
                ""
            };
            let req =
                format!("GET /api/ack HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        };
        let page = ask(true).await;
        assert!(page.starts_with("HTTP/1.1 401"), "{page}");
        assert!(!page.contains("www-authenticate"), "{page}");
        let script = ask(false).await;
        assert!(script.contains("www-authenticate: Basic"), "{script}");
    }
}
