//! The console's transport on the real binary: plain HTTP on loopback only,
//! elsewhere the gRPC listener's TLS or no start at all.

use crate::helpers::*;

#[tokio::test]
async fn off_loopback_the_console_takes_tls_or_the_server_refuses_to_start() {
    let database_url = fresh_database().await;
    let app = spawn_app_on(&database_url, Default::default()).await;
    let auditor = app.auditor_token.clone();
    app.stop().await;

    // Plain HTTP beyond loopback is refused, INSECURE_PLAINTEXT or not.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_transplant-audit"))
        .env("DATABASE_URL", &database_url)
        .env("FINGERPRINT_KEY", test_key_hex())
        .env("SIGNING_KEY", test_signing_key_hex())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("CONSOLE_ADDR", "0.0.0.0:0")
        .env("INSECURE_PLAINTEXT", "true")
        .env_remove("TLS_CERT_FILE")
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refusing a plain-HTTP console"), "{stderr}");

    // With the gRPC listener's TLS, the console serves HTTPS and its cookie is Secure.
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("console test CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let cert = write(dir.path(), "server.pem", &cert);
    let key = write(dir.path(), "server.key", &key);
    let server = ServerProcess::start_with(
        &database_url,
        "info",
        &[
            ("TLS_CERT_FILE", cert.to_str().expect("utf-8")),
            ("TLS_KEY_FILE", key.to_str().expect("utf-8")),
            ("CONSOLE_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    let addr = server
        .log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["fields"]["message"] == "serving the console")
        .and_then(|entry| entry["fields"]["addr"].as_str().map(str::to_owned))
        .expect("the console's address is logged");
    let port = addr.rsplit_once(':').expect("a port").1;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let base = format!("https://localhost:{port}");
    let login = https
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(login.status(), 200);
    assert!(login.headers().contains_key("strict-transport-security"));
    let signed = https
        .post(format!("{base}/login"))
        .form(&[("api_key", auditor.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    // No plain HTTP on that port.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/login")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    server.signal(libc::SIGTERM);
    let (status, _) = server.drain().await;
    assert!(status.success());
}
