//! The viewer off loopback (issue "patient data off loopback"): the daemon listens on 10.77.0.1,
//! a private address on the loopback device of a network namespace the test makes itself
//! (`unshare --net`), and every client enters that namespace (`nsenter`); no test-only switch
//! in the daemon. Checked with real clients: curl against the daemon's self-signed certificate
//! (HTTPS only, the token rule on every route but /healthz and /metrics, the refusal of a token
//! in a URL, the login's session cookie and its rate limit), openssl s_client (the protocol and
//! the certificate), headless Chromium pinned to the certificate's public key (401 without the
//! cookie, the login typed in, the viewer streaming, /review painting and accepting), a
//! certificate rotated with Reload() served without a restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon_support::*;

const ADDR: &str = "10.77.0.1:8443";
const TOKEN: &str = "s3cret-viewer-token";

/// `pocusd run` (as `daemon_cmd` makes it) inside a new network namespace whose loopback device
/// holds 10.77.0.1.
fn netns_daemon(bus: &Bus, dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let inner = daemon_cmd(bus, true, &dir.join("state"), &["--source", "demo?fps=10"]);
    let mut script = String::from("ip link set lo up && ip addr add 10.77.0.1/32 dev lo && exec");
    script.push_str(&format!(" '{}'", inner.get_program().to_string_lossy()));
    for a in inner.get_args() {
        script.push_str(&format!(" '{}'", a.to_string_lossy()));
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "bash", "-c", &script]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(repo())
        .env("POCUSD__HTTP__LISTEN", ADDR)
        .env("POCUSD__HTTP__TOKEN", TOKEN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::spawn(cmd, dir)
}

/// Runs `prog args` in the daemon's network namespace.
fn inside(d: &Daemon, prog: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", d.pid()))
        .arg("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .output()
        .expect("nsenter runs (util-linux)")
}

/// curl inside the namespace trusting `cacert`: (status code, headers and body).
fn curl(d: &Daemon, cacert: &Path, extra: &[&str], url: &str) -> (u16, String) {
    let cert = cacert.to_string_lossy();
    let mut args = vec!["-s", "-i", "--max-time", "5", "--cacert", &cert];
    args.extend(extra);
    args.push(url);
    let o = inside(d, "curl", &args);
    let out = common::stdout(&o);
    let code = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn url(path: &str) -> String {
    format!("https://{ADDR}{path}")
}

fn openssl_fingerprint(cert: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    // "sha256 Fingerprint=AB:CD:..."
    common::stdout(&o)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root for unshare --net, curl and openssl (scripts/setup.sh); scripts/test.sh runs it"]
fn off_loopback_the_viewer_is_https_only_and_every_route_needs_the_token() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = netns_daemon(&bus, tmp.path(), &[]);
    wait_for("the viewer", Duration::from_secs(60), || {
        d.log().contains(&format!("viewer at https://{ADDR}/"))
    });
    wait_for("streaming", Duration::from_secs(60), || state_of(&bus) == 1);
    let cert: PathBuf = tmp.path().join("state/tls/cert.pem");
    let fp = openssl_fingerprint(&cert);
    assert!(
        d.log().contains(&fp),
        "the fingerprint is logged:\n{}",
        d.log()
    );
    let (_, human) = status(&bus, false);
    assert!(
        human.contains(&format!(
            "Viewer: https://{ADDR}/ (TLS, self-signed; certificate SHA-256 {fp}"
        )),
        "{human}"
    );

    // Monitoring stays open; everything else needs the token.
    assert_eq!(curl(&d, &cert, &[], &url("/healthz")).0, 200);
    assert_eq!(curl(&d, &cert, &[], &url("/metrics")).0, 200);
    for path in [
        "/",
        "/review",
        "/events",
        "/stream.mjpg",
        "/snapshot.jpg",
        "/api/review",
        "/api/worklist",
    ] {
        let (code, out) = curl(&d, &cert, &[], &url(path));
        assert_eq!(code, 401, "{path} without the token:\n{out}");
    }
    let (code, out) = curl(&d, &cert, &["-X", "POST"], &url("/api/snapshot"));
    assert_eq!(code, 401, "{out}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, out) = curl(&d, &cert, &["-H", &bearer], &url("/"));
    assert_eq!(code, 200, "{out}");
    assert!(
        out.to_lowercase()
            .contains("strict-transport-security: max-age="),
        "{out}"
    );
    assert_eq!(
        curl(&d, &cert, &["-H", &bearer], &url("/snapshot.jpg")).0,
        200
    );
    // A token in the URL is refused, saying which header to use.
    let (code, out) = curl(&d, &cert, &[], &url(&format!("/?token={TOKEN}")));
    assert_eq!(code, 401, "{out}");
    assert!(out.contains("Authorization: Bearer"), "{out}");
    // Plain HTTP to the TLS listener: refused in words.
    let o = inside(
        &d,
        "curl",
        &["-s", "-i", "--max-time", "5", &format!("http://{ADDR}/")],
    );
    let out = common::stdout(&o);
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("HTTPS only"),
        "{out}"
    );
    // openssl: TLS 1.3, and the certificate it is shown is the one logged.
    let o = inside(
        &d,
        "bash",
        &[
            "-c",
            &format!("openssl s_client -connect {ADDR} -brief </dev/null 2>&1; openssl s_client -connect {ADDR} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"),
        ],
    );
    let report = common::stdout(&o);
    assert!(report.contains("TLSv1.3"), "{report}");
    assert!(
        report.contains(&fp),
        "the served certificate is {fp}:\n{report}"
    );

    // The login: a session cookie (HttpOnly, Secure, SameSite=Strict) that opens the pages.
    let jar = tmp.path().join("jar");
    let jar_s = jar.to_string_lossy().to_string();
    let form = format!("token={TOKEN}&next=/review");
    let (code, out) = curl(&d, &cert, &["-c", &jar_s, "--data", &form], &url("/login"));
    assert_eq!(code, 303, "{out}");
    let lower = out.to_lowercase();
    assert!(
        lower.contains("set-cookie: pocusd_session=")
            && lower.contains("httponly")
            && lower.contains("secure")
            && lower.contains("samesite=strict")
            && lower.contains("location: /review"),
        "{out}"
    );
    assert_eq!(curl(&d, &cert, &["-b", &jar_s], &url("/")).0, 200);
    assert_eq!(curl(&d, &cert, &["-b", &jar_s], &url("/api/review")).0, 200);
    // Headless Chromium pinned to the certificate's public key, through the login.
    let viewer = get(&bus, "Viewer");
    let spki = viewer
        .split("'spki_sha256': <'")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("{viewer}"))
        .to_string();
    let origin = format!("https://{ADDR}");
    let script = |name: &str| repo().join("tests").join(name);
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", d.pid()))
        .args(["timeout", "120", "python3"])
        .arg(script("cdp_login.py"))
        .args([origin.as_str(), TOKEN])
        .env("POCUSD_CDP_SPKI", &spki)
        .output()
        .unwrap();
    assert!(o.status.success(), "cdp_login.py: {}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    for (path, code) in v["without_cookie"].as_object().unwrap() {
        assert_eq!(code, 401, "{path} without the cookie: {v}");
    }
    assert_eq!(v["token_in_url"]["status"], 401, "{v}");
    assert!(
        v["token_in_url"]["body"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{v}"
    );
    assert!(
        v["seq"].as_u64().is_some() && v["stream_width"].as_u64() > Some(0),
        "{v}"
    );
    assert_eq!(v["cookie_visible_to_js"], false, "HttpOnly: {v}");
    // /review paints and accepts through the login.
    let o = call(&bus, "Snapshot", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let snap = common::stdout(&o).split('\'').nth(1).unwrap().to_string();
    let id = Path::new(&snap)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", d.pid()))
        .args(["timeout", "120", "python3"])
        .arg(script("cdp_review.py"))
        .arg(format!("{origin}/review?id={id}"))
        .args(["10", "12", "60", "12", "mouse"])
        .env("POCUSD_CDP_SPKI", &spki)
        .env("POCUSD_CDP_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(o.status.success(), "cdp_review.py: {}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["accepted"], format!("{id}.png"), "{v}");
    assert!(tmp
        .path()
        .join(format!("state/labelled/masks/{id}.png"))
        .is_file());

    // A rotated certificate is served after Reload(), without a restart.
    let key = tmp.path().join("state/tls/key.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=10.77.0.1",
            "-addext",
            "subjectAltName=IP:10.77.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rotated = openssl_fingerprint(&cert);
    assert_ne!(rotated, fp);
    let o = call(&bus, "Reload", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = curl(&d, &cert, &["-H", &bearer], &url("/"));
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        "the new fingerprint published",
        Duration::from_secs(30),
        || get(&bus, "Viewer").contains(&rotated),
    );
    // Wrong tokens, typed on /login or sent as a header: 401 each, then 429 for the address
    // whatever it sends; logged with the address, never with what was sent.
    for i in 0..3 {
        let (code, _) = curl(&d, &cert, &["--data", "token=guess-xyz"], &url("/login"));
        assert_eq!(code, 401, "login attempt {i}");
    }
    for i in 0..2 {
        let (code, _) = curl(
            &d,
            &cert,
            &["-H", "Authorization: Bearer guess-abc"],
            &url("/api/review"),
        );
        assert_eq!(code, 401, "header attempt {i}");
    }
    let (code, out) = curl(
        &d,
        &cert,
        &["--data", &format!("token={TOKEN}")],
        &url("/login"),
    );
    assert_eq!(code, 429, "{out}");
    assert_eq!(curl(&d, &cert, &["-H", &bearer], &url("/")).0, 429);
    let log = d.log();
    assert!(
        log.contains("viewer login failed from 10.77.0.1 (3 in the last minute)")
            && log.contains("wrong viewer token from 10.77.0.1 (5 in the last minute)"),
        "{log}"
    );
    assert!(
        !log.contains("guess-xyz") && !log.contains("guess-abc") && !log.contains(TOKEN),
        "{log}"
    );
    assert!(d.stop().success(), "{}", d.log());
}
