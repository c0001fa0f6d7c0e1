//! The page is served from the binary.

use crate::common::{get, model_dir, models, TestServer};

#[test]
fn the_page_is_served_with_its_controls() {
    let m = models();
    let s = TestServer::start(model_dir(&[("a", &m.a)]), |_| {});
    let a = get(&s.url("/"));
    assert_eq!(a.status, 200);
    assert!(a.content_type.unwrap().starts_with("text/html"));
    for id in [
        "id=\"model\"",
        "id=\"file\"",
        "id=\"score\"",
        "id=\"heatmap\"",
    ] {
        assert!(a.body.contains(id), "page lacks {id}");
    }
    assert!(
        !a.body.contains("http://") && !a.body.contains("https://"),
        "no CDN"
    );
}

/// Chromium and chromedriver, or `None` (with the reason printed) when they are not installed
/// and `RD_REQUIRE_BROWSER=1` is not set (CI sets it, so CI cannot pass by skipping).
fn browser() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let find = |names: &[&str]| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|n| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            let why = "chromium and chromedriver are not installed \
                       (Debian: apt-get install chromium chromium-driver)";
            if std::env::var("RD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!("RD_REQUIRE_BROWSER=1 but {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// A chromedriver process, killed on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released; chromedriver takes it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The acceptance check: a real browser loads `/`, uploads a picture, and the score, the label
/// and the heatmap appear. With `RD_SCREENSHOT=path` it also saves the page (README's picture).
#[test]
fn a_browser_uploads_a_picture_and_sees_score_and_heatmap() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let m = models();
    let s = TestServer::start(model_dir(&[("bottle", &m.a), ("fabric", &m.b)]), |_| {});
    let picture = s.dir.path().join("part_0042.png");
    // A synthetic metal puck with a scratch, as the demo's dataset draws it.
    let (rgb, _) = rd_dataset::synthetic::render_sample(
        rd_dataset::SyntheticCategory::Puck,
        Some(rd_dataset::DefectKind::Scratch),
        256,
        7,
        0,
    );
    image::RgbImage::from_raw(256, 256, rgb)
        .unwrap()
        .save(&picture)
        .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let port = free_port();
    let _driver = Driver(
        std::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "chromedriver did not listen"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: Result<(), fantoccini::error::CmdError> = runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=900,760",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .expect("chromedriver opens a headless Chromium session");
        let page = async {
            client.goto(&s.url("/")).await?;
            // The model list is filled from /v2/models.
            client
                .wait()
                .at_most(std::time::Duration::from_secs(20))
                .for_element(fantoccini::Locator::Css("#model option[value=bottle]"))
                .await?;
            let input = client.find(fantoccini::Locator::Id("file")).await?;
            input.send_keys(picture.to_str().unwrap()).await?;
            let label = client
                .wait()
                .at_most(std::time::Duration::from_secs(60))
                .for_element(fantoccini::Locator::Css("#label.normal, #label.anomalous"))
                .await?;
            let label = label.text().await?;
            assert!(label == "normal" || label == "anomalous", "label {label:?}");
            let score: f64 = client
                .find(fantoccini::Locator::Id("score"))
                .await?
                .text()
                .await?
                .parse()
                .expect("the score is a number");
            let served = crate::common::post(
                &s.url("/predict/bottle"),
                "image/png",
                &std::fs::read(&picture).unwrap(),
            )
            .json()["score"]
                .as_f64()
                .unwrap();
            assert!(
                (score - served).abs() < 1e-4,
                "page shows {score}, server says {served}"
            );
            // The heatmap image is decoded and shown at the picture's aspect ratio.
            let shown = client
                .execute(
                    "const h = document.getElementById('heatmap'); \
                     return [h.complete, h.naturalWidth, h.naturalHeight];",
                    vec![],
                )
                .await?;
            assert_eq!(shown, serde_json::json!([true, 256, 256]), "heatmap shown");
            if let Some(path) = std::env::var_os("RD_SCREENSHOT") {
                std::fs::write(path, client.screenshot().await?).unwrap();
            }
            Ok(())
        }
        .await;
        let _ = client.close().await;
        page
    });
    result.expect("the page works in the browser");
}
