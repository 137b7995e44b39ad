//! The deploy-window page (issue 8, part 2): `/admin` and its assets are served from the
//! binary with strict headers and stay out of the OpenAPI document, while the data behind
//! them still needs the token.

mod common;

use std::path::Path;

use common::{Backend, Settings, TestApp};

const TOKEN: &str = "admin-page-test-token-0001";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_strict_headers_and_no_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(
        &Settings::new(dir.path(), &Backend::Sqlite).set("CARTBUS_ADMIN_TOKEN", TOKEN),
    )
    .await;

    for (path, content_type, source) in [
        ("/admin", "text/html", "src/http/admin_page/index.html"),
        (
            "/admin/app.js",
            "text/javascript",
            "src/http/admin_page/app.js",
        ),
        ("/admin/app.css", "text/css", "src/http/admin_page/app.css"),
    ] {
        // No token: the page is public; what it shows is not.
        let response = app.client.get(app.url(path)).send().await.expect(path);
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert!(policy.contains("form-action 'none'"), "{path}: {policy}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = response.text().await.expect("body");
        let file = std::fs::read_to_string(manifest_dir().join(source)).expect("asset source");
        assert_eq!(body, file, "{path} is served as committed");
    }
    let html = std::fs::read_to_string(manifest_dir().join("src/http/admin_page/index.html"))
        .expect("index.html");
    assert!(
        !html.contains("<script>") && !html.contains("style=\""),
        "no inline script or style: the CSP would block it"
    );

    let (status, _) = app.get_json("/v1/admin/consumer").await;
    assert_eq!(status, 401, "the page's data needs the token");
    let (_, openapi) = app.get_json("/openapi.json").await;
    let paths = openapi["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|p| !p.starts_with("/admin")),
        "the page is not API: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    app.stop().await.expect("clean stop");
}
