//! The console's web page: `GET /` and `GET /assets/{name}`, served from bytes compiled into the
//! binary.
//!
//! A gateway host has no internet and an operator should not run a build step, so the page is
//! plain HTML, CSS and JavaScript in `assets/` (with uPlot 1.6.32 vendored for the trend chart,
//! its MIT licence beside it), included with `include_bytes!`. The page is one client of the JSON
//! API (`api.rs`) and the stream; it has no routes of its own beyond its files.

use axum::extract::{Path, Request};
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

/// The routes of the page, to merge into the console's router (whatever its state type).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/:name", get(asset))
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

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

fn serve(name: &str) -> Response {
    let Some(a) = find(name) else {
        return (StatusCode::NOT_FOUND, format!("no asset named {name:?}\n")).into_response();
    };
    let mut r = (StatusCode::OK, a.bytes).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    // The files change only with the binary; revalidating is cheap and an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every file the page refers to is served: a missing one would leave the wall board blank.
    #[test]
    fn every_file_the_page_loads_is_an_asset() {
        let html = std::str::from_utf8(find("index.html").expect("index").bytes).expect("utf-8");
        let mut refs = 0;
        for part in html.split("/assets/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(
                find(&name).is_some(),
                "index.html loads /assets/{name}, not served"
            );
            refs += 1;
        }
        assert_eq!(
            refs, 5,
            "index.html should load 2 stylesheets and 3 scripts"
        );
        assert!(find("uPlot.LICENSE").is_some());
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Over real HTTP: the page at `/` with its content type and CSP, a script with its own, and
    /// a 404 naming the unknown asset.
    #[tokio::test]
    async fn serves_page_assets_and_404() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let app: Router = routes();
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
