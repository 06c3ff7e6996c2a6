//! `--mode paint`: the inbox as an auditor's browser paints it. Starts
//! chromedriver, opens headless Chromium at 1280 × 900, signs in at
//! `/login` with an AUDITOR key as a person would (types it into the form's
//! `api_key` field and submits), then loads each inbox URL `rounds` times,
//! URLs interleaved, one load at a time. After each load it reads the
//! page's own Navigation Timing and Paint Timing entries and reports, per
//! URL, p50/p99 of first-contentful-paint against a p99 target of 300 ms,
//! beside the p50 of responseStart (the first byte of the page) and of
//! domContentLoaded.
//!
//! Every time is the browser's, from the start of the navigation: the
//! request, the server's work, the stylesheet (revalidated: it is served
//! `no-cache`), layout and paint. The sign-in's own load of the inbox warms
//! the browser; the timed loads follow it. Each load writes the access log,
//! as an auditor's would; nothing else is written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::report::{Failures, Judged, Latency};

/// Target: p99 of first-contentful-paint below this, in milliseconds.
pub const TARGET_MS: f64 = 300.0;
/// The browser window, CSS pixels.
const WINDOW: (u32, u32) = (1280, 900);
/// The URLs timed.
const PAGES: [&str; 2] = ["/flags", "/flags?status=OPEN&min_severity=HIGH"];
/// How long chromedriver may take to answer.
const DRIVER_START: Duration = Duration::from_secs(10);
/// How long a page may take to load, and the sign-in to land.
const PAGE_LOAD: Duration = Duration::from_secs(30);
/// How long after the load event a first contentful paint may still arrive.
const PAINT_WAIT: Duration = Duration::from_secs(2);
/// Between two looks at the page.
const POLL: Duration = Duration::from_millis(20);

/// Reads the page's timing entries (times in ms from the navigation's start).
const ENTRIES: &str = "\
const nav = performance.getEntriesByType('navigation')[0];
const fcp = performance.getEntriesByType('paint')
  .find(e => e.name === 'first-contentful-paint');
return {
  path: location.pathname,
  status: nav && nav.responseStatus ? nav.responseStatus : null,
  response_start: nav ? nav.responseStart : null,
  dom_content_loaded: nav ? nav.domContentLoadedEventEnd : null,
  first_contentful_paint: fcp ? fcp.startTime : null,
  rows: document.querySelectorAll('tr[data-flag-id]').length,
};";

/// Where the sign-in form's submission has got to.
const LANDING: &str = "\
const error = document.getElementById('login-error');
return {
  path: location.pathname,
  inbox: document.querySelector('table#flags') !== null,
  error: error ? error.textContent : null,
};";

/// How the phase runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The console's base address, e.g. `http://127.0.0.1:8080`.
    pub console: String,
    /// Loads per URL.
    pub rounds: usize,
    /// The chromedriver executable.
    pub chromedriver: PathBuf,
    /// The Chromium executable chromedriver starts.
    pub chromium: PathBuf,
}

/// Why the phase could not run.
#[derive(Debug, thiserror::Error)]
pub enum PaintError {
    /// No AUDITOR key was given.
    #[error("--mode paint needs an AUDITOR key (--api-key)")]
    NoKey,
    /// The chromedriver path names no executable.
    #[error(
        "chromedriver not found at {0}: install Debian's chromium-driver \
         (apt-get install chromium chromium-driver) or give --chromedriver"
    )]
    DriverMissing(PathBuf),
    /// The Chromium path names nothing.
    #[error(
        "chromium not found at {0}: install Debian's chromium \
         (apt-get install chromium chromium-driver) or give --chromium"
    )]
    BrowserMissing(PathBuf),
    /// chromedriver could not be started.
    #[error("starting chromedriver {0}: {1}")]
    DriverStart(PathBuf, std::io::Error),
    /// chromedriver stopped before it answered.
    #[error("chromedriver {0} exited before answering ({1})")]
    DriverExited(PathBuf, std::process::ExitStatus),
    /// chromedriver did not answer in time.
    #[error("chromedriver {0} did not answer on {1} within {2:?}")]
    DriverSilent(PathBuf, String, Duration),
    /// The console refused the key.
    #[error("sign-in refused: {0} (an AUDITOR or ADMIN key is needed)")]
    SignInRefused(String),
    /// The submitted form led to neither the inbox nor a refusal.
    #[error("sign-in did not reach the inbox within {0:?}: the browser is at {1}")]
    SignInStuck(Duration, String),
}

/// Why one load gave no figure.
#[derive(Debug, PartialEq, thiserror::Error)]
enum LoadError {
    /// The page was the sign-in form: the session ended.
    #[error("sent to /login: the session ended (expired, signed out or the key revoked)")]
    SignedOut,
    /// The page was some other one.
    #[error("landed on {0}, not {1}")]
    Elsewhere(String, String),
    /// The server answered an error page.
    #[error("answered {0}")]
    Status(u16),
    /// A timing entry was absent or out of range.
    #[error("no usable {0} in the page's timing entries")]
    Entry(&'static str),
    /// No first contentful paint (yet).
    #[error("no first-contentful-paint within {:?} of the load event", PAINT_WAIT)]
    NotPainted,
}

/// The page's timing entries, as the script reads them.
#[derive(Debug, Deserialize)]
struct Entries {
    path: String,
    status: Option<u16>,
    response_start: Option<f64>,
    dom_content_loaded: Option<f64>,
    first_contentful_paint: Option<f64>,
    rows: usize,
}

/// One load's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timing {
    response_start: Duration,
    dom_content_loaded: Duration,
    first_contentful_paint: Duration,
    rows: usize,
}

/// A time in milliseconds from the page's entries, as a duration.
fn millis(name: &'static str, ms: Option<f64>) -> Result<Duration, LoadError> {
    ms.filter(|ms| *ms >= 0.0)
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
        .ok_or(LoadError::Entry(name))
}

impl Entries {
    /// The figures of a load of `page`, or why there are none.
    fn timing(&self, page: &str) -> Result<Timing, LoadError> {
        let wanted = page.split('?').next().unwrap_or(page);
        if self.path == "/login" {
            return Err(LoadError::SignedOut);
        }
        if self.path != wanted {
            return Err(LoadError::Elsewhere(self.path.clone(), wanted.to_owned()));
        }
        if let Some(status) = self.status.filter(|s| *s != 200) {
            return Err(LoadError::Status(status));
        }
        let first_contentful_paint = match self.first_contentful_paint {
            None => return Err(LoadError::NotPainted),
            paint => millis("first-contentful-paint", paint)?,
        };
        Ok(Timing {
            response_start: millis("responseStart", self.response_start)?,
            dom_content_loaded: millis("domContentLoadedEventEnd", self.dom_content_loaded)?,
            first_contentful_paint,
            rows: self.rows,
        })
    }
}

/// Where the sign-in stands, as the script reads it.
#[derive(Debug, Deserialize)]
struct Landing {
    path: String,
    inbox: bool,
    error: Option<String>,
}

impl Landing {
    /// `Some` once the sign-in has an outcome: the inbox, or the form
    /// again with its refusal.
    fn outcome(&self) -> Option<Result<(), PaintError>> {
        if self.inbox {
            Some(Ok(()))
        } else {
            self.error
                .as_ref()
                .map(|e| Err(PaintError::SignInRefused(e.trim().to_owned())))
        }
    }
}

/// One row of the report: one URL.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The URL's path and query.
    pub page: &'static str,
    /// Loads measured.
    pub loads: usize,
    /// Loads that gave no figure.
    pub errors: usize,
    /// Mean flag rows on the page.
    pub mean_rows: f64,
    /// responseStart: the page's first byte.
    pub response_start: Option<Latency>,
    /// domContentLoadedEventEnd.
    pub dom_content_loaded: Option<Latency>,
    /// first-contentful-paint, judged.
    pub first_contentful_paint: Option<Latency>,
    /// The target p99 of first-contentful-paint, in milliseconds.
    pub p99_target_ms: f64,
    /// p99 of first-contentful-paint below the target, when measured.
    pub pass: Option<bool>,
    /// The first few failures.
    pub error_samples: Vec<String>,
}

impl Row {
    /// The figures of `page` from its loads.
    fn of(page: &'static str, timings: &[Timing], failures: Failures) -> Self {
        let latency = |of: fn(&Timing) -> Duration| {
            let mut samples: Vec<Duration> = timings.iter().map(of).collect();
            Latency::of(&mut samples)
        };
        let paint = latency(|t| t.first_contentful_paint);
        let rows: usize = timings.iter().map(|t| t.rows).sum();
        Self {
            page,
            loads: timings.len(),
            errors: failures.count,
            mean_rows: rows as f64 / timings.len().max(1) as f64,
            response_start: latency(|t| t.response_start),
            dom_content_loaded: latency(|t| t.dom_content_loaded),
            pass: paint.map(|l| l.p99_ms < TARGET_MS),
            first_contentful_paint: paint,
            p99_target_ms: TARGET_MS,
            error_samples: failures.samples,
        }
    }
}

/// Everything the phase measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The console.
    pub console: String,
    /// The browser's user agent.
    pub browser: String,
    /// Window width and height.
    pub window: (u32, u32),
    /// Loads per URL.
    pub rounds: usize,
    /// One row per URL.
    pub rows: Vec<Row>,
}

impl Judged for Report {
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "inbox paint at {}, {} loads per URL, one at a time, headless at {}x{}\n{}",
            self.console, self.rounds, self.window.0, self.window.1, self.browser
        );
        let _ = writeln!(
            out,
            "{:<38} {:>5} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  FCP p99 < {TARGET_MS} ms",
            "page", "ok", "errors", "rows", "TTFB p50", "DCL p50", "FCP p50", "FCP p99", "FCP max"
        );
        let p50 = |l: &Option<Latency>| l.map(|l| l.p50_ms).unwrap_or_default();
        for r in &self.rows {
            let paint = r.first_contentful_paint.unwrap_or(Latency {
                p50_ms: 0.0,
                p99_ms: 0.0,
                max_ms: 0.0,
            });
            let verdict = match r.pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None => "–",
            };
            let _ = writeln!(
                out,
                "{:<38} {:>5} {:>6} {:>5.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {verdict}",
                r.page,
                r.loads,
                r.errors,
                r.mean_rows,
                p50(&r.response_start),
                p50(&r.dom_content_loaded),
                paint.p50_ms,
                paint.p99_ms,
                paint.max_ms
            );
            for s in &r.error_samples {
                let _ = writeln!(out, "    {s}");
            }
        }
        let _ = writeln!(
            out,
            "(ms from the start of each navigation: TTFB = responseStart, DCL = \
             domContentLoadedEventEnd, FCP = first-contentful-paint)"
        );
        out
    }

    fn errors(&self) -> usize {
        self.rows.iter().map(|r| r.errors).sum()
    }

    fn missed_a_target(&self) -> bool {
        self.rows.iter().any(|r| r.pass == Some(false))
    }
}

/// A running chromedriver, killed when dropped.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    /// Starts the chromedriver at `path` on a free loopback port and waits
    /// until it answers.
    async fn start(path: &Path) -> Result<Self, PaintError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| PaintError::DriverStart(path.to_owned(), e))?
            .port();
        let mut child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => PaintError::DriverMissing(path.to_owned()),
                _ => PaintError::DriverStart(path.to_owned(), e),
            })?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + DRIVER_START;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PaintError::DriverExited(path.to_owned(), status));
            }
            let status = http.get(format!("{url}/status")).send().await;
            if status.is_ok_and(|s| s.status().is_success()) {
                return Ok(Self { _child: child, url });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(PaintError::DriverSilent(path.to_owned(), url, DRIVER_START))
    }

    /// A new headless Chromium window of [`WINDOW`].
    async fn browser(&self, chromium: &Path) -> anyhow::Result<Client> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                // Without the back/forward cache: a cached inbox keeps its
                // event stream open, and six of them take every connection
                // Chromium allows to the console, stalling the next load.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-back-forward-cache",
                         format!("--window-size={},{}", WINDOW.0, WINDOW.1)],
            }),
        );
        let timeout = PAGE_LOAD.as_millis() as u64;
        caps.insert(
            "timeouts".into(),
            serde_json::json!({ "pageLoad": timeout, "script": timeout }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .with_context(|| {
                format!(
                    "starting {} headless through chromedriver",
                    chromium.display()
                )
            })
    }
}

/// Runs the phase against the console at `settings.console`, signed in
/// with the AUDITOR key `api_key`.
pub async fn run(api_key: Option<&str>, settings: &Settings) -> anyhow::Result<Report> {
    let api_key = api_key.filter(|k| !k.is_empty()).ok_or(PaintError::NoKey)?;
    if !settings.chromium.exists() {
        return Err(PaintError::BrowserMissing(settings.chromium.clone()).into());
    }
    let driver = Driver::start(&settings.chromedriver).await?;
    let browser = driver.browser(&settings.chromium).await?;
    let measured = measure(&browser, api_key, settings).await;
    // The browser is closed whatever happened, so that no Chromium outlives the run.
    let closed = browser.close().await;
    let report = measured?;
    closed.context("closing the browser")?;
    Ok(report)
}

/// Signs in, then times the loads.
async fn measure(browser: &Client, api_key: &str, settings: &Settings) -> anyhow::Result<Report> {
    let console = settings.console.trim_end_matches('/').to_owned();
    sign_in(browser, &console, api_key).await?;
    let user_agent = browser
        .execute("return navigator.userAgent;", vec![])
        .await
        .context("reading the user agent")?;

    let mut loads: Vec<(Vec<Timing>, Failures)> =
        PAGES.iter().map(|_| Default::default()).collect();
    for _ in 0..settings.rounds {
        for (page, (timings, failures)) in PAGES.iter().zip(&mut loads) {
            match load(browser, &console, page).await {
                Ok(timing) => timings.push(timing),
                Err(e) => failures.add(format!("{page}: {e:#}")),
            }
        }
    }
    Ok(Report {
        console,
        browser: user_agent.as_str().unwrap_or_default().to_owned(),
        window: WINDOW,
        rounds: settings.rounds,
        rows: PAGES
            .iter()
            .zip(loads)
            .map(|(page, (timings, failures))| Row::of(page, &timings, failures))
            .collect(),
    })
}

/// Types `api_key` into the sign-in form and submits it, as a person would;
/// waits for the inbox or the form's refusal.
async fn sign_in(browser: &Client, console: &str, api_key: &str) -> anyhow::Result<()> {
    let login = format!("{console}/login");
    browser
        .goto(&login)
        .await
        .with_context(|| format!("loading {login}"))?;
    browser
        .find(Locator::Css("input[name=api_key]"))
        .await
        .with_context(|| format!("{login} has no api_key field"))?
        .send_keys(api_key)
        .await
        .context("typing the key")?;
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .with_context(|| format!("{login} has no submit button"))?
        .click()
        .await
        .context("submitting the sign-in form")?;
    let deadline = Instant::now() + PAGE_LOAD;
    let mut at = login;
    while Instant::now() < deadline {
        // While the next page loads the script may fail; look again.
        if let Ok(value) = browser.execute(LANDING, vec![]).await {
            let landing: Landing =
                serde_json::from_value(value).context("reading the page after sign-in")?;
            if let Some(outcome) = landing.outcome() {
                return Ok(outcome?);
            }
            at = landing.path;
        }
        tokio::time::sleep(POLL).await;
    }
    Err(PaintError::SignInStuck(PAGE_LOAD, at).into())
}

/// Loads `page` and reads its timing entries, waiting a little for the
/// first contentful paint when the load event came first.
async fn load(browser: &Client, console: &str, page: &str) -> anyhow::Result<Timing> {
    browser
        .goto(&format!("{console}{page}"))
        .await
        .context("loading")?;
    let deadline = Instant::now() + PAINT_WAIT;
    loop {
        let value = browser
            .execute(ENTRIES, vec![])
            .await
            .context("reading the timing entries")?;
        let entries: Entries =
            serde_json::from_value(value).context("reading the timing entries")?;
        match entries.timing(page) {
            Err(LoadError::NotPainted) if Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            timing => return Ok(timing?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(path: &str, status: Option<u16>, paint: Option<f64>) -> Entries {
        Entries {
            path: path.into(),
            status,
            response_start: Some(4.5),
            dom_content_loaded: Some(20.0),
            first_contentful_paint: paint,
            rows: 50,
        }
    }

    #[test]
    fn a_load_gives_its_times_from_the_navigation_start() {
        let t = entries("/flags", Some(200), Some(61.5))
            .timing("/flags?status=OPEN&min_severity=HIGH")
            .expect("a timing");
        assert_eq!(
            t,
            Timing {
                response_start: Duration::from_micros(4_500),
                dom_content_loaded: Duration::from_millis(20),
                first_contentful_paint: Duration::from_micros(61_500),
                rows: 50,
            }
        );
        // Browsers without responseStatus report none.
        assert!(entries("/flags", None, Some(61.5)).timing("/flags").is_ok());
    }

    #[test]
    fn a_load_elsewhere_or_unpainted_gives_no_figure() {
        let cases = [
            (
                entries("/login", Some(200), Some(9.0)),
                LoadError::SignedOut,
            ),
            (
                entries("/rules", Some(200), Some(9.0)),
                LoadError::Elsewhere("/rules".into(), "/flags".into()),
            ),
            (
                entries("/flags", Some(503), Some(9.0)),
                LoadError::Status(503),
            ),
            (entries("/flags", Some(200), None), LoadError::NotPainted),
            (
                entries("/flags", Some(200), Some(-1.0)),
                LoadError::Entry("first-contentful-paint"),
            ),
            (
                Entries {
                    response_start: None,
                    ..entries("/flags", Some(200), Some(9.0))
                },
                LoadError::Entry("responseStart"),
            ),
            (
                Entries {
                    dom_content_loaded: Some(1e300),
                    ..entries("/flags", Some(200), Some(9.0))
                },
                LoadError::Entry("domContentLoadedEventEnd"),
            ),
        ];
        for (entries, error) in cases {
            assert_eq!(entries.timing("/flags"), Err(error), "{entries:?}");
        }
    }

    #[test]
    fn the_script_answer_parses() {
        let entries: Entries = serde_json::from_value(serde_json::json!({
            "path": "/flags", "status": null, "response_start": 3.2,
            "dom_content_loaded": 40.1, "first_contentful_paint": 48.0, "rows": 50,
        }))
        .expect("entries");
        assert_eq!(entries.timing("/flags").map(|t| t.rows), Ok(50));
        let landing: Landing = serde_json::from_value(serde_json::json!({
            "path": "/login", "inbox": false, "error": " That key is not valid. ",
        }))
        .expect("landing");
        assert_eq!(landing.path, "/login");
    }

    #[test]
    fn a_refused_key_ends_the_sign_in_with_the_consoles_message() {
        let landing = |inbox, error: Option<&str>| Landing {
            path: "/login".into(),
            inbox,
            error: error.map(str::to_owned),
        };
        assert!(landing(false, None).outcome().is_none(), "still loading");
        assert!(matches!(landing(true, None).outcome(), Some(Ok(()))));
        let refused = landing(false, Some("\n  This key cannot sign in.  \n")).outcome();
        let Some(Err(PaintError::SignInRefused(message))) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(message, "This key cannot sign in.");
        let text = PaintError::SignInRefused(message).to_string();
        assert!(text.contains("AUDITOR or ADMIN"), "{text}");
    }

    #[test]
    fn rows_judge_the_p99_of_first_contentful_paint() {
        let timing = |paint_ms| Timing {
            response_start: Duration::from_millis(3),
            dom_content_loaded: Duration::from_millis(30),
            first_contentful_paint: Duration::from_millis(paint_ms),
            rows: 40,
        };
        let fast: Vec<Timing> = (1..=100).map(timing).collect();
        let mut failures = Failures::default();
        failures.add("/flags: answered 500".into());
        let row = Row::of("/flags", &fast, failures);
        assert_eq!((row.loads, row.errors, row.mean_rows), (100, 1, 40.0));
        assert_eq!(row.first_contentful_paint.map(|l| l.p99_ms), Some(99.0));
        assert_eq!(row.pass, Some(true));
        let slow: Vec<Timing> = (1..=100).map(|i| timing(i * 4)).collect();
        let missed = Row::of(
            "/flags?status=OPEN&min_severity=HIGH",
            &slow,
            Failures::default(),
        );
        assert_eq!(missed.pass, Some(false));
        let none = Row::of("/flags", &[], Failures::default());
        assert_eq!((none.pass, none.mean_rows), (None, 0.0));

        let report = Report {
            console: "http://127.0.0.1:8080".into(),
            browser: "HeadlessChrome".into(),
            window: WINDOW,
            rounds: 100,
            rows: vec![row, missed, none],
        };
        assert_eq!(report.errors(), 1);
        assert!(report.missed_a_target());
        let table = report.render();
        assert!(
            table.contains("MISS") && table.contains("pass") && table.contains("answered 500"),
            "{table}"
        );
    }

    fn settings(chromedriver: &Path, chromium: &Path) -> Settings {
        Settings {
            console: "http://127.0.0.1:9".into(),
            rounds: 1,
            chromedriver: chromedriver.to_owned(),
            chromium: chromium.to_owned(),
        }
    }

    #[tokio::test]
    async fn a_missing_driver_or_browser_is_named() {
        let dir = tempfile::tempdir().expect("a folder");
        let absent = dir.path().join("absent");
        let present = std::env::current_exe().expect("this test");

        let error = Driver::start(&absent).await.err().expect("no driver");
        assert!(matches!(error, PaintError::DriverMissing(_)), "{error:?}");
        assert!(error.to_string().contains("chromium-driver"), "{error}");

        let error = run(Some("ta_x"), &settings(&present, &absent))
            .await
            .expect_err("no browser");
        assert!(
            matches!(error.downcast_ref(), Some(PaintError::BrowserMissing(_))),
            "{error:?}"
        );
        let error = run(Some("ta_x"), &settings(&absent, &present))
            .await
            .expect_err("no driver");
        assert!(
            matches!(error.downcast_ref(), Some(PaintError::DriverMissing(_))),
            "{error:?}"
        );
        for key in [None, Some("")] {
            let error = run(key, &settings(&present, &present))
                .await
                .expect_err("no key");
            assert!(
                matches!(error.downcast_ref(), Some(PaintError::NoKey)),
                "{error:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_driver_that_exits_at_once_is_reported() {
        // `true` takes any argument and exits 0 without listening.
        let error = Driver::start(Path::new("true"))
            .await
            .err()
            .expect("no driver");
        assert!(matches!(error, PaintError::DriverExited(..)), "{error:?}");
    }
}
