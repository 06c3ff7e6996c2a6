//! The console in a real browser: Debian's `chromium` driven by
//! `chromedriver` over WebDriver. Skipped, with a message, only when no
//! browser or driver can be found (`.ci/run` installs them). Screenshots of
//! every page go to `<target>/tmp/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use transplant_audit::domain::Role;
use transplant_audit::wire::pb;

use super::Site;
use crate::helpers::{abo_incompatible, all_flags, create_key_for, kidney, submit};

/// The first of `candidates` that exists, or the one named by `env`.
fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A running chromedriver, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver, or says why the browser tests cannot run.
    async fn start() -> Option<Self> {
        let chromium = find(
            "CHROME_BIN",
            &[
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ],
        );
        let driver = find(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            eprintln!(
                "SKIPPED: the console's browser test needs chromium and chromedriver \
                 (apt-get install chromium chromium-driver; .ci/run installs them)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // Owned at once, so that a failure below still kills it.
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
        };
        for _ in 0..100 {
            if reqwest::get(format!("{}/status", driver.url)).await.is_ok() {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    /// A new headless browser window of `width` × 900.
    async fn browser(&self, width: u32) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": self.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},900")],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn shoot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits for `css` to appear (the page may still be loading).
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
}

async fn sign_in(site: &Site, browser: &Client, token: &str) {
    browser.goto(&site.url("/login")).await.expect("goto");
    let field = wait_for(browser, "input[name=api_key]").await;
    field.send_keys(token).await.expect("type the key");
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("sign in");
    if browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("table#flags"))
        .await
        .is_err()
    {
        let url = browser.current_url().await.expect("url");
        let source = browser.source().await.unwrap_or_default();
        panic!("not signed in: at {url}: {source}");
    }
}

/// Moves the open flag page's flag to `to` with `note`; returns the status shown after.
async fn triage(browser: &Client, to: &str, note: &str) -> String {
    submit_triage(browser, to, note).await;
    wait_for(browser, "#flag-status")
        .await
        .text()
        .await
        .expect("status")
}

/// Clicks `button` and waits for the page it loads (the old page is
/// marked first, so the wait cannot find an element of the old one).
async fn click_and_load(browser: &Client, button: &str) {
    browser
        .execute(
            "document.body.setAttribute('data-left', '1'); return null;",
            vec![],
        )
        .await
        .expect("mark the page");
    browser
        .find(Locator::Css(button))
        .await
        .expect("the button")
        .click()
        .await
        .expect("click");
    wait_for(browser, "body:not([data-left])").await;
}

/// Submits the open flag page's triage form.
async fn submit_triage(browser: &Client, to: &str, note: &str) {
    let select = wait_for(browser, "select#to").await;
    select.select_by_value(to).await.expect("choose the status");
    browser
        .find(Locator::Css("textarea#note"))
        .await
        .expect("note")
        .send_keys(note)
        .await
        .expect("type the note");
    click_and_load(browser, "#apply-triage").await;
}

async fn flag_id(site: &Site, external_record_id: &str, rule_id: &str) -> String {
    all_flags(
        &site.app,
        pb::ListFlagsRequest {
            rule_id: rule_id.into(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .find(|f| f.external_record_id == external_record_id)
    .expect("the flag")
    .flag_id
}

#[tokio::test]
async fn an_auditor_triages_in_a_real_browser_and_sees_new_flags_arrive() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let site = Site::start().await;
    let [script, attribute, image] = [
        "<script>window.injected=1</script>",
        "\"onmouseover=\"window.injected=2",
        "<img src=x onerror=\"window.injected=3\">",
    ];
    submit(&site.app, abo_incompatible("BROWSER-1"))
        .await
        .expect("stored");
    let mut hostile = abo_incompatible("BROWSER-X");
    hostile.clinic_id = format!("C{script}{image}");
    hostile.external_record_id = format!("X{attribute}");
    submit(&site.app, hostile).await.expect("stored");
    let flag = flag_id(&site, "BROWSER-1", "ABO_INCOMPATIBLE").await;

    let browser = driver.browser(1280).await;
    browser.goto(&site.url("/flags")).await.expect("goto");
    wait_for(&browser, "input[name=api_key]").await;
    shoot(&browser, "login").await;
    sign_in(&site, &browser, &site.app.auditor_token).await;

    // Filter the inbox by rule and status, as a user would.
    wait_for(&browser, "select#rule_id")
        .await
        .select_by_value("ABO_INCOMPATIBLE")
        .await
        .expect("rule");
    wait_for(&browser, "select#status")
        .await
        .select_by_value("OPEN")
        .await
        .expect("status");
    click_and_load(&browser, "#apply-filters").await;
    let row = wait_for(&browser, &format!("tr[data-flag-id=\"{flag}\"]")).await;
    let url = browser.current_url().await.expect("url");
    assert!(url.as_str().contains("rule_id=ABO_INCOMPATIBLE"), "{url}");
    shoot(&browser, "inbox").await;

    // Open it, start the review, confirm it.
    row.find(Locator::Css("a"))
        .await
        .expect("link")
        .click()
        .await
        .expect("open");
    wait_for(&browser, "#flag-status").await;
    shoot(&browser, "flag").await;
    assert_eq!(triage(&browser, "IN_REVIEW", "").await, "IN_REVIEW");
    assert_eq!(
        triage(
            &browser,
            "CONFIRMED",
            "Confirmed: the pair is ABO-incompatible."
        )
        .await,
        "CONFIRMED"
    );
    shoot(&browser, "flag-confirmed").await;
    let stored: String = sqlx::query_scalar("SELECT status FROM flags WHERE id = $1")
        .bind(flag.parse::<i64>().unwrap())
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, "CONFIRMED");

    // The record and rules pages.
    let record: i64 = sqlx::query_scalar("SELECT record_id FROM flags WHERE id = $1")
        .bind(flag.parse::<i64>().unwrap())
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    browser
        .goto(&site.url(&format!("/records/{record}")))
        .await
        .unwrap();
    wait_for(&browser, "table.fields").await;
    shoot(&browser, "record").await;
    browser.goto(&site.url("/rules")).await.unwrap();
    wait_for(&browser, "table#rules").await;
    shoot(&browser, "rules").await;

    // Hostile values are shown as text: nothing ran, nothing was injected.
    let hostile_flag = flag_id(&site, &format!("X{attribute}"), "ABO_INCOMPATIBLE").await;
    for path in ["/flags".to_owned(), format!("/flags/{hostile_flag}")] {
        browser.goto(&site.url(&path)).await.unwrap();
        wait_for(&browser, "main").await;
        let injected = browser
            .execute(
                "return [window.injected === undefined, document.querySelectorAll('main img').length, \
                 document.querySelectorAll('main script').length];",
                vec![],
            )
            .await
            .expect("inspect the page");
        assert_eq!(injected, serde_json::json!([true, 0, 0]), "{path}");
        assert!(
            browser.get_alert_text().await.is_err(),
            "no alert on {path}"
        );
    }
    shoot(&browser, "flag-hostile").await;

    // An open inbox receives a flag raised through gRPC, without reloading.
    browser.goto(&site.url("/flags")).await.unwrap();
    wait_for(&browser, "table#flags").await;
    browser
        .execute("window.notReloaded = true; return null;", vec![])
        .await
        .unwrap();
    submit(&site.app, abo_incompatible("BROWSER-LIVE"))
        .await
        .expect("stored");
    let live = flag_id(&site, "BROWSER-LIVE", "ABO_INCOMPATIBLE").await;
    wait_for(&browser, &format!("tr[data-flag-id=\"{live}\"]")).await;
    let same_page = browser
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        serde_json::json!(true),
        "the row came without a reload"
    );
    shoot(&browser, "inbox-live").await;

    // Readable on a phone: nothing wider than the screen but the tables' own scroll.
    browser.set_window_size(390, 844).await.expect("resize");
    browser
        .goto(&site.url(&format!("/flags/{flag}")))
        .await
        .unwrap();
    wait_for(&browser, "#flag-status").await;
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        serde_json::json!(true),
        "no page-wide horizontal scroll at 390 px"
    );
    shoot(&browser, "flag-390").await;
    browser.goto(&site.url("/flags")).await.unwrap();
    wait_for(&browser, "table#flags").await;
    shoot(&browser, "inbox-390").await;
    browser.close().await.expect("close");
}

#[tokio::test]
async fn two_principals_dismiss_a_critical_flag_in_two_browsers() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let site = Site::start().await;
    let mut record = kidney("CRIT-1");
    record.laterality = pb::Laterality::Both as i32; // a living donor's two kidneys
    submit(&site.app, record).await.expect("stored");
    let flag = flag_id(&site, "CRIT-1", "LIVING_DONOR_ORGAN").await;
    let first = create_key_for(
        &site.app.store,
        Role::Auditor,
        None,
        Some("first@registry.test"),
    )
    .await;
    let second = create_key_for(
        &site.app.store,
        Role::Auditor,
        None,
        Some("second@registry.test"),
    )
    .await;
    for token in [&first, &second] {
        site.app.auth.learn(&super::key_of(token));
    }
    let one = driver.browser(1280).await;
    let two = driver.browser(1280).await;
    sign_in(&site, &one, &first).await;
    sign_in(&site, &two, &second).await;
    let page = site.url(&format!("/flags/{flag}"));
    one.goto(&page).await.unwrap();
    assert_eq!(triage(&one, "IN_REVIEW", "").await, "IN_REVIEW");
    assert_eq!(
        triage(&one, "DISMISSED", "A documented paired donation.").await,
        "IN_REVIEW"
    );
    let proposer = wait_for(&one, "#proposed-by").await.text().await.unwrap();
    assert_eq!(proposer, "first@registry.test");
    shoot(&one, "flag-dismissal-proposed").await;
    // The proposer cannot approve it alone.
    one.goto(&page).await.unwrap();
    submit_triage(&one, "DISMISSED", "Approving my own proposal.").await;
    let refused = wait_for(&one, "p.error").await.text().await.unwrap();
    assert!(refused.contains("second auditor"), "{refused}");
    shoot(&one, "flag-self-approval-refused").await;
    // Another principal, in another browser, approves.
    two.goto(&page).await.unwrap();
    assert_eq!(
        triage(&two, "DISMISSED", "Agreed: documented.").await,
        "DISMISSED"
    );
    shoot(&two, "flag-dismissed").await;
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// axe-core's script: from AXE_CORE_JS (as `.ci/run` exports it), else
/// installed into its cache by `.ci/axe`.
fn axe_source() -> String {
    let path = match std::env::var_os("AXE_CORE_JS") {
        Some(path) => PathBuf::from(path),
        None => {
            let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/axe"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run .ci/axe");
            assert!(out.status.success(), ".ci/axe failed");
            PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
        }
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs axe-core on the open page; answers its serious and critical
/// violations, each as "rule: the elements it names".
/// An inbox put away in the back/forward cache holds no stream: a browser
/// gives one host six connections over HTTP/1.1, and cached inboxes that
/// kept theirs left later pages waiting for one. An inbox brought back
/// resumes its feed where it left off.
#[tokio::test]
async fn inboxes_put_away_hold_no_stream_and_one_brought_back_resumes_its_feed() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let site = Site::start().await;
    let browser = driver.browser(1280).await;
    sign_in(&site, &browser, &site.app.auditor_token).await;
    // Each load puts the inbox before it away; had they kept their streams,
    // the seventh would wait for a connection one of them holds.
    // Distinct addresses: a load of the address shown replaces its entry.
    let inboxes = ["OPEN", "IN_REVIEW", "CONFIRMED", "DISMISSED"]
        .into_iter()
        .flat_map(|status| {
            ["LOW", "HIGH"].map(|min| format!("/flags?status={status}&min_severity={min}"))
        });
    for (load, inbox) in inboxes.enumerate() {
        let url = site.url(&inbox);
        shown_soon(
            &browser,
            browser.goto(&url),
            "table#flags",
            &format!("inbox {load}"),
        )
        .await;
    }
    // The inbox brought back shows every flag, the one raised below too.
    let url = site.url("/flags");
    shown_soon(
        &browser,
        browser.goto(&url),
        "table#flags",
        "the last inbox",
    )
    .await;
    browser
        .execute("window.keptInCache = true; return null;", vec![])
        .await
        .unwrap();
    let url = site.url("/rules");
    shown_soon(&browser, browser.goto(&url), "table#rules", "the rules").await;
    shown_soon(
        &browser,
        browser.back(),
        "table#flags",
        "the inbox brought back",
    )
    .await;
    let restored = browser
        .execute("return window.keptInCache === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        restored,
        serde_json::json!(true),
        "the first inbox came back from the cache, not reloaded"
    );
    submit(&site.app, abo_incompatible("BROWSER-BACK"))
        .await
        .expect("stored");
    let arrived = flag_id(&site, "BROWSER-BACK", "ABO_INCOMPATIBLE").await;
    wait_for(&browser, &format!("tr[data-flag-id=\"{arrived}\"]")).await;
    browser.close().await.expect("close");
}

/// Navigates and waits for `css` on a page that should come at once; a
/// page left waiting for a connection takes tens of seconds.
async fn shown_soon(
    browser: &Client,
    navigation: impl std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    css: &str,
    page: &str,
) {
    tokio::time::timeout(Duration::from_secs(10), navigation)
        .await
        .unwrap_or_else(|_| panic!("{page} waited for a connection"))
        .expect("navigate");
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{page} waited: {e}"));
}

async fn axe(browser: &Client, source: &str) -> Vec<String> {
    // WebDriver's scripts run outside the page's Content-Security-Policy.
    browser
        .execute(&format!("{source}\n;return null;"), vec![])
        .await
        .expect("inject axe-core");
    let found = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): '
                   + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("run axe-core");
    serde_json::from_value(found).expect("a list")
}

#[tokio::test]
async fn every_page_passes_axe_and_reads_at_1280_and_390_px() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let source = axe_source();
    let site = Site::start().await;
    // A registered clinic (with a hostile name, drawn by the charts) and
    // records with flags there, a donor shared by two of them, and a case.
    let mut clinic = crate::helpers::clinic("DE-BER-01", "DE");
    clinic.name =
        "Berlin <script>window.injected=1</script>\"onmouseover=\"window.injected=2".into();
    site.app
        .registry
        .clone()
        .upsert_clinic(pb::UpsertClinicRequest {
            clinic: Some(clinic),
        })
        .await
        .expect("clinic");
    let flags = super::cases::ring(&site).await;
    let (_, session) = site.auditor().await;
    let case = super::cases::open_case(&site, &session, "Ring", &flags).await;
    let flag = flags[0];
    let record: i64 = sqlx::query_scalar("SELECT record_id FROM flags WHERE id = $1")
        .bind(flag)
        .fetch_one(&site.app.pool)
        .await
        .unwrap();
    let (donor, recipient): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT donor_fp, recipient_fp FROM records WHERE id = $1")
            .bind(record)
            .fetch_one(&site.app.pool)
            .await
            .unwrap();
    let pages = [
        ("inbox", "/flags".to_owned()),
        ("flag", format!("/flags/{flag}")),
        ("record", format!("/records/{record}")),
        ("donor", format!("/donors/{}", hex::encode(&donor))),
        (
            "recipient",
            format!("/recipients/{}", hex::encode(&recipient)),
        ),
        ("clinic", "/clinics/DE-BER-01".to_owned()),
        ("network", format!("/network?flag_id={flag}")),
        ("cases", "/cases".to_owned()),
        ("suggested", "/cases/suggested".to_owned()),
        ("case", format!("/cases/{case}")),
        ("rules", "/rules".to_owned()),
        ("not-found", "/records/999999".to_owned()),
    ];
    let mut failures = Vec::new();
    for width in [1280u32, 390] {
        let browser = driver.browser(width).await;
        browser.goto(&site.url("/login")).await.expect("goto");
        wait_for(&browser, "input[name=api_key]").await;
        for v in axe(&browser, &source).await {
            failures.push(format!("/login at {width} px: {v}"));
        }
        shoot(&browser, &format!("axe-login-{width}")).await;
        sign_in(&site, &browser, &site.app.auditor_token).await;
        for (name, path) in &pages {
            browser.goto(&site.url(path)).await.expect("goto");
            wait_for(&browser, "main").await;
            for v in axe(&browser, &source).await {
                failures.push(format!("{path} at {width} px: {v}"));
            }
            let state = browser
                .execute(
                    "return [window.injected === undefined,
                             document.documentElement.scrollWidth <= window.innerWidth + 1];",
                    vec![],
                )
                .await
                .expect("inspect the page");
            assert_eq!(
                state[0],
                serde_json::json!(true),
                "{path}: a typed value ran"
            );
            if state[1] != serde_json::json!(true) {
                failures.push(format!(
                    "{path} at {width} px: wider than the window (page-wide horizontal scroll)"
                ));
            }
            shoot(&browser, &format!("axe-{name}-{width}")).await;
        }
        browser.close().await.expect("close");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
