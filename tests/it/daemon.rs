//! `pocusd run` with real parts: a private `dbus-daemon` per test, `gdbus` and `dbus-send` as
//! clients next to the project's own zbus proxy, the committed policy loaded into a bus configured
//! like Debian's system bus with users the test creates, sd_notify on a socket the test owns, and
//! systemd's own analyzers on the units.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use crate::daemon_support::*;

/// The members of the org.pocusd.Daemon1 interface, normalised: one entry per property, method
/// and signal with its arguments in order, sorted by member; comments, annotations and whitespace
/// ignored.
fn interface_shape(xml: &str) -> Vec<String> {
    let start = xml
        .find("<interface name=\"org.pocusd.Daemon1\">")
        .expect("the interface is in the XML");
    let end = start + xml[start..].find("</interface>").unwrap();
    let mut body = xml[start..end].to_string();
    while let Some(a) = body.find("<!--") {
        let b = a + body[a..].find("-->").unwrap() + 3;
        body.replace_range(a..b, "");
    }
    let mut out: Vec<String> = Vec::new();
    for tag in body.split('<').skip(1) {
        let tag = tag
            .trim()
            .trim_end_matches('>')
            .trim_end_matches('/')
            .trim();
        if tag.starts_with('/') || tag.starts_with("annotation") || tag.starts_with("interface") {
            continue;
        }
        let mut words: Vec<&str> = tag.split_whitespace().collect();
        let kind = words.remove(0);
        words.sort();
        let item = format!("{kind} {}", words.join(" "));
        if kind == "arg" {
            if let Some(last) = out.last_mut() {
                *last += &format!(" ({item})");
                continue;
            }
        }
        out.push(item);
    }
    out.sort();
    out
}

#[test]
fn interface_shape_reads_members() {
    let shape = interface_shape(
        "<node><interface name=\"org.pocusd.Daemon1\"><!-- x --><method name=\"B\"/><method name=\"A\"><arg type=\"s\" name=\"p\" direction=\"in\"/></method></interface></node>",
    );
    assert_eq!(
        shape,
        [
            "method name=\"A\" (arg direction=\"in\" name=\"p\" type=\"s\")",
            "method name=\"B\""
        ]
    );
}

#[test]
fn live_daemon_on_dbus_properties_signals_errors_snapshot_log_and_status() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cfg = tmp.path().join("pocusd.toml");
    std::fs::write(&cfg, "[dbus]\nmeasurement_hz = 10.0\n").unwrap();
    let mut d = Daemon::spawn(
        daemon_cmd(
            &bus,
            true,
            &state,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--source",
                "demo?fps=20&seed=4",
            ],
        ),
        tmp.path(),
    );
    wait_for("the daemon to stream", Duration::from_secs(60), || {
        gdbus(
            &bus,
            &[
                "introspect",
                "--session",
                "--dest",
                NAME,
                "--object-path",
                PATH,
            ],
        )
        .status
        .success()
            && state_of(&bus) == 1
    });

    // Introspection equals the committed contract.
    let live = gdbus(
        &bus,
        &[
            "introspect",
            "--session",
            "--xml",
            "--dest",
            NAME,
            "--object-path",
            PATH,
        ],
    );
    let committed = std::fs::read_to_string(repo().join("systemd/org.pocusd.Daemon1.xml")).unwrap();
    assert_eq!(
        interface_shape(&common::stdout(&live)),
        interface_shape(&committed),
        "live introspection differs from systemd/org.pocusd.Daemon1.xml"
    );

    // Properties with dbus-send, the other real client.
    let o = Command::new("dbus-send")
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .args([
            "--session",
            "--print-reply",
            &format!("--dest={NAME}"),
            PATH,
            "org.freedesktop.DBus.Properties.GetAll",
            "string:org.pocusd.Daemon1",
        ])
        .output()
        .unwrap();
    let all = common::stdout(&o);
    assert!(o.status.success(), "{}", common::stderr(&o));
    for k in [
        "StateText",
        "Source",
        "Model",
        "Fps",
        "LatencyMs",
        "DroppedFrames",
        "Calibrated",
        "LastMeasurement",
    ] {
        assert!(
            all.contains(&format!("\"{k}\"")),
            "GetAll lacks {k}:\n{all}"
        );
    }
    assert!(all.contains("demo?fps=20&seed=4"), "{all}");
    let model = get(&bus, "Model");
    assert!(
        model.contains("aponeurosis.onnx") && model.contains("'sha256'"),
        "{model}"
    );

    // Measurement signals through the project's proxy: seq increases, values carry the keys.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seqs: Vec<(u64, HashMap<String, zbus::OwnedVariant>)> = rt.block_on(async {
        use futures_util::StreamExt;
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .build()
            .await
            .unwrap();
        let proxy = pocusd::daemon::status::Daemon1Proxy::new(&conn)
            .await
            .unwrap();
        let mut stream = proxy.receive_measurement().await.unwrap();
        let mut out = Vec::new();
        while out.len() < 6 {
            let sig = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("a Measurement signal within 20 s")
                .unwrap();
            let a = sig.args().unwrap();
            out.push((*a.seq(), a.values().clone()));
        }
        out
    });
    for w in seqs.windows(2) {
        assert!(
            w[1].0 > w[0].0,
            "seq must increase: {:?}",
            seqs.iter().map(|s| s.0).collect::<Vec<_>>()
        );
    }
    let values = &seqs[0].1;
    for k in ["confidence", "flag", "model_sha256"] {
        assert!(values.contains_key(k), "values lack {k}: {values:?}");
    }
    let last = get(&bus, "LastMeasurement");
    assert!(
        last.contains("'seq'") && last.contains("'timestamp_us'"),
        "{last}"
    );

    // Bad arguments get the named errors; a corrupt model is refused while streaming goes on.
    let err = |o: &Output| format!("{}{}", common::stderr(o), common::stdout(o));
    let o = call(&bus, "SetThreshold", &["1.5"]);
    assert!(
        !o.status.success() && err(&o).contains("org.pocusd.Daemon1.Error.InvalidArgument"),
        "{}",
        err(&o)
    );
    let o = call(&bus, "LoadModel", &["models/aponeurosis.onnx"]);
    assert!(
        err(&o).contains("org.pocusd.Daemon1.Error.InvalidArgument"),
        "{}",
        err(&o)
    );
    let o = call(&bus, "LoadModel", &["/nonexistent/model.onnx"]);
    assert!(
        err(&o).contains("org.pocusd.Daemon1.Error.NotFound"),
        "{}",
        err(&o)
    );
    let corrupt = tmp.path().join("corrupt.onnx");
    let mut bytes = std::fs::read(repo().join("models/aponeurosis.onnx")).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&corrupt, &bytes).unwrap();
    let seq_before = seqs.last().unwrap().0;
    let o = call(&bus, "LoadModel", &[corrupt.to_str().unwrap()]);
    assert!(
        err(&o).contains("org.pocusd.Daemon1.Error.ModelRejected"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("running model is kept"), "{}", err(&o));
    assert_eq!(get(&bus, "Model"), model, "the running model must be kept");
    let seq_of = |s: String| -> u64 {
        let i = s.find("'seq': <uint64 ").expect("seq in LastMeasurement") + 15;
        s[i..].split('>').next().unwrap().parse().unwrap()
    };
    wait_for(
        "measurements after the refused model",
        Duration::from_secs(20),
        || seq_of(get(&bus, "LastMeasurement")) > seq_before + 5,
    );
    assert_eq!(state_of(&bus), 1);

    // A good model (same network, another path) is taken.
    let copy = tmp.path().join("copy.onnx");
    std::fs::copy(repo().join("models/aponeurosis.onnx"), &copy).unwrap();
    let o = call(&bus, "LoadModel", &[copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    wait_for(
        "the Model property to show the new path",
        Duration::from_secs(10),
        || get(&bus, "Model").contains("copy.onnx"),
    );
    let o = call(&bus, "SetThreshold", &["0.4"]);
    assert!(o.status.success(), "{}", err(&o));

    // Snapshot: raw frame, mask, overlay and measurements in a private folder.
    let o = call(&bus, "Snapshot", &[]);
    assert!(o.status.success(), "{}", err(&o));
    let out = common::stdout(&o);
    let folder = PathBuf::from(out.trim().trim_start_matches("('").trim_end_matches("',)"));
    assert!(folder.starts_with(state.join("snapshots")), "{out}");
    for f in ["frame.png", "mask.png", "overlay.png", "measurement.json"] {
        assert!(folder.join(f).is_file(), "snapshot lacks {f}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("measurement.json")).unwrap())
            .unwrap();
    assert!(
        meta["seq"].as_u64().is_some() && meta["values"]["model_sha256"].is_string(),
        "{meta}"
    );
    let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
    let frame = image::open(folder.join("frame.png")).unwrap();
    assert_eq!((frame.width(), frame.height()), (640, 480));

    // Pause and resume.
    assert!(call(&bus, "Pause", &["true"]).status.success());
    wait_for("state paused", Duration::from_secs(10), || {
        state_of(&bus) == 5
    });
    assert!(get(&bus, "StateText").contains("paused"));
    assert!(call(&bus, "Pause", &["false"]).status.success());
    wait_for("state streaming again", Duration::from_secs(10), || {
        state_of(&bus) == 1
    });

    // Reload: a broken config is refused (the old one keeps running), a good one is taken.
    std::fs::write(&cfg, "[dbus]\nmeasurement_hz = 10.0\nno_such_key = 1\n").unwrap();
    let o = call(&bus, "Reload", &[]);
    assert!(
        err(&o).contains("org.pocusd.Daemon1.Error.InvalidArgument")
            && err(&o).contains("no_such_key"),
        "{}",
        err(&o)
    );
    assert_eq!(state_of(&bus), 1);
    std::fs::write(
        &cfg,
        "[dbus]\nmeasurement_hz = 5.0\n[postprocess]\nthreshold = 0.6\n",
    )
    .unwrap();
    assert!(call(&bus, "Reload", &[]).status.success());
    d.signal("HUP");
    wait_for("the SIGHUP reload", Duration::from_secs(10), || {
        d.log().matches("configuration reloaded").count() >= 2
    });

    // `pocusd status` as a user would run it.
    let v = status(&bus, true).0.unwrap();
    assert_eq!(v["state_name"], "streaming", "{v}");
    assert!(v["last_measurement"]["seq"].as_u64().is_some(), "{v}");
    // No --roi: the model's own policy, no override.
    assert_eq!(v["model"]["roi"], "auto", "{v}");
    assert_eq!(v["model"]["roi_applied"], "auto", "{v}");
    assert_eq!(v["model"]["roi_override"], false, "{v}");
    assert!(v["fps"].as_f64().unwrap() > 0.0, "{v}");
    let text = status(&bus, false).1;
    assert!(
        text.contains("pocusd - streaming")
            && text.contains("copy.onnx")
            && text.contains("ROI: auto (the model's policy)")
            && text.contains("Latency"),
        "{text}"
    );

    // SIGTERM: exit 0, name released, measurement log written with increasing seq.
    let st = d.stop();
    assert!(st.success(), "exit {st:?}; log:\n{}", d.log());
    assert!(!name_has_owner(&bus), "the bus name is still held");
    let logs: Vec<_> = std::fs::read_dir(state.join("log"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(logs.len(), 1, "one log file per day");
    let text = std::fs::read_to_string(logs[0].path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 6, "{} log lines", lines.len());
    for w in lines.windows(2) {
        assert!(w[1]["seq"].as_u64() > w[0]["seq"].as_u64());
    }
    for k in [
        "time",
        "seq",
        "values",
        "flag",
        "model_sha256",
        "calibration",
    ] {
        assert!(
            lines[0].get(k).is_some(),
            "log line lacks {k}: {}",
            lines[0]
        );
    }
}

#[test]
fn frames_n_stops_cleanly_and_config_errors_exit_78() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::spawn(
        daemon_cmd(
            &bus,
            true,
            tmp.path(),
            &["--source", "demo?fps=0", "--frames", "12"],
        ),
        tmp.path(),
    );
    let st = d.wait(Duration::from_secs(120));
    assert!(st.success(), "{}", d.log());
    assert!(
        d.log().contains("12 frames processed") || d.log().contains("frames processed"),
        "{}",
        d.log()
    );

    let o = daemon_cmd(&bus, true, tmp.path(), &[])
        .env("POCUSD__DBUS__BUS", "sometimes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("dbus.bus"),
        "{}",
        common::stderr(&o)
    );
}

/// Reads datagrams from a notify socket into a shared list.
fn notify_listener(path: &Path) -> std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>> {
    let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            g.lock().unwrap().push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    });
    got
}

#[test]
fn sd_notify_ready_without_a_source_watchdog_in_no_signal_and_paused_and_not_when_hung() {
    let bus = Bus::session();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("notify");
    let got = notify_listener(&sock);
    let mut cmd = daemon_cmd(
        &bus,
        true,
        &tmp.path().join("state"),
        &[
            "--source",
            &format!("images:{}/no-such-folder", tmp.path().display()),
        ],
    );
    cmd.env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "600000")
        .env("POCUSD_TEST_HOOKS", "1");
    let mut d = Daemon::spawn(cmd, tmp.path());
    let count = |what: &str, since: Instant| {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(t, m)| *t >= since && m.lines().any(|l| l == what))
            .count()
    };
    let t0 = Instant::now();
    wait_for("READY=1", Duration::from_secs(60), || {
        count("READY=1", t0) == 1
    });
    // No source: no_signal, and the watchdog keeps being fed.
    wait_for("state no_signal", Duration::from_secs(20), || {
        state_of(&bus) == 2
    });
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        count("WATCHDOG=1", t1) >= 3,
        "watchdog pings in no_signal: {}",
        count("WATCHDOG=1", t1)
    );
    let status: Vec<String> = got.lock().unwrap().iter().map(|m| m.1.clone()).collect();
    assert!(
        status.iter().any(|m| m.contains("STATUS=no_signal")),
        "{status:?}"
    );
    // SIGHUP: RELOADING=1, then READY=1 again (or systemd would wait in "reloading" for good).
    let th = Instant::now();
    d.signal("HUP");
    wait_for("RELOADING=1 then READY=1", Duration::from_secs(10), || {
        count("RELOADING=1", th) == 1 && count("READY=1", th) == 1
    });
    // Paused: still fed.
    assert!(call(&bus, "Pause", &["true"]).status.success());
    wait_for("state paused", Duration::from_secs(10), || {
        state_of(&bus) == 5
    });
    let t2 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(count("WATCHDOG=1", t2) >= 3, "watchdog pings while paused");
    // A hung processing thread (test hook): the pings stop.
    d.signal("USR2");
    wait_for("the hook to take effect", Duration::from_secs(10), || {
        d.log().contains("processing thread hangs")
    });
    std::thread::sleep(pocusd::daemon::HEARTBEAT_FRESH + Duration::from_millis(600));
    let t3 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count("WATCHDOG=1", t3),
        0,
        "no watchdog pings while the pipeline hangs"
    );
    // Shutdown says STOPPING=1 and exits 0.
    let t4 = Instant::now();
    assert!(d.stop().success(), "{}", d.log());
    assert_eq!(count("STOPPING=1", t4), 1);
}

fn ensure_group(name: &str) {
    let _ = Command::new("groupadd").args(["-f", name]).status();
}

fn ensure_user(name: &str, groups: &[&str]) {
    if Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success()
    {
        if !groups.is_empty() {
            let st = Command::new("usermod")
                .args(["-a", "-G", &groups.join(","), name])
                .status()
                .unwrap();
            assert!(st.success());
        }
        return;
    }
    let mut c = Command::new("useradd");
    c.args([
        "--system",
        "--no-create-home",
        "--user-group",
        "--shell",
        "/usr/sbin/nologin",
    ]);
    if !groups.is_empty() {
        c.args(["-G", &groups.join(",")]);
    }
    let st = c.arg(name).status().expect("useradd runs");
    assert!(st.success(), "useradd {name}");
}

/// A command run as `user` through setpriv, on `bus` as the system bus.
fn as_user(user: &str, bus: &Bus, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(program)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env("POCUSD__HTTP__LISTEN", "127.0.0.1:0")
        .env("HOME", "/");
    c
}

#[test]
#[ignore = "needs root to create users (useradd, setpriv); scripts/test.sh runs it"]
fn system_bus_policy_only_pocusd_owns_operators_call_everyone_reads() {
    let uid = std::fs::metadata("/proc/self").unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&uid),
        0,
        "this test creates users: run it as root (CI does)"
    );
    ensure_group("pocusd-operators");
    ensure_user("pocusd", &[]);
    ensure_user("pocusdtest-op", &["pocusd-operators"]);
    ensure_user("pocusdtest-user", &[]);
    let bus = Bus::system_like();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let st = Command::new("chown")
        .args(["pocusd:pocusd", state.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let bin = env!("CARGO_BIN_EXE_pocusd");
    let model = repo().join("models/aponeurosis.onnx");
    let run_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "run".into(),
            "--model".into(),
            model.display().to_string(),
            "--source".into(),
            "demo?fps=10".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // Another user cannot own the name: the daemon says so and exits 1.
    let args = run_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = as_user("pocusdtest-op", &bus, bin, &args)
        .env("POCUSD__STORAGE__DIR", &state)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("cannot serve org.pocusd.Daemon1 on the system bus"),
        "{}",
        common::stderr(&o)
    );
    assert!(
        common::stderr(&o).contains("AccessDenied") || common::stderr(&o).contains("not allowed"),
        "{}",
        common::stderr(&o)
    );

    // User pocusd can.
    let mut cmd = as_user("pocusd", &bus, bin, &args);
    cmd.env("POCUSD__STORAGE__DIR", &state)
        .env_remove("NOTIFY_SOCKET");
    let mut d = Daemon::spawn(cmd, tmp.path());
    let sys_get = |user: &str, prop: &str| {
        let a = call_args(
            "--system",
            "org.freedesktop.DBus.Properties.Get",
            &["org.pocusd.Daemon1", prop],
        );
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        as_user(user, &bus, "gdbus", &a).output().unwrap()
    };
    wait_for(
        "the daemon on the system-like bus",
        Duration::from_secs(60),
        || {
            let o = sys_get("pocusdtest-user", "State");
            o.status.success() && common::stdout(&o).contains("uint32 1")
        },
    );

    // Everyone: properties, introspection and signals.
    let o = as_user(
        "pocusdtest-user",
        &bus,
        "gdbus",
        &[
            "introspect",
            "--system",
            "--dest",
            NAME,
            "--object-path",
            PATH,
        ],
    )
    .output()
    .unwrap();
    assert!(
        o.status.success() && common::stdout(&o).contains("LoadModel"),
        "{}",
        common::stderr(&o)
    );
    let mut mon = as_user(
        "pocusdtest-user",
        &bus,
        "gdbus",
        &["monitor", "--system", "--dest", NAME],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = mon.kill();
    let mut seen = String::new();
    mon.stdout
        .take()
        .unwrap()
        .read_to_string(&mut seen)
        .unwrap();
    let _ = mon.wait();
    assert!(
        seen.contains("org.pocusd.Daemon1.Measurement"),
        "an unprivileged user receives signals:\n{seen}"
    );

    // Methods: AccessDenied for a plain user, allowed for an operator.
    let method = |user: &str, m: &str, a: &[&str]| {
        let v = call_args("--system", &format!("org.pocusd.Daemon1.{m}"), a);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        as_user(user, &bus, "gdbus", &v).output().unwrap()
    };
    let snap_dir = state.to_str().unwrap().to_string();
    // Every method of the committed interface, walked from the XML: a method added later without
    // a case here fails this test, so the policy test covers it. (args, changes state)
    let case = |m: &str| -> Option<(Vec<String>, bool)> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Some(match m {
            "Pause" => (v(&["true"]), true),
            "SetThreshold" => (v(&["0.5"]), true),
            "Snapshot" => (v(&[]), true),
            "Reload" => (v(&[]), true),
            "LoadModel" => (v(&[model.to_str().unwrap()]), true),
            "RollbackModel" => (v(&["--", "-1"]), true),
            "LoadExtraModel" => (v(&["fascicle", model.to_str().unwrap()]), true),
            "SetExam" => (v(&["PID-1", "DOE^JANE", "ACC1"]), true),
            "RefreshWorklist" => (v(&[]), true),
            "SelectWorklistItem" => (v(&["ACC1", "SPS1"]), true),
            _ => return None,
        })
    };
    let xml = std::fs::read_to_string(repo().join("systemd/org.pocusd.Daemon1.xml")).unwrap();
    let mut methods: Vec<String> = pocusd::publish::dbus::method_in_signatures(&xml)
        .into_keys()
        .collect();
    methods.sort();
    assert!(methods.len() >= 5, "{methods:?}");
    for m in &methods {
        let (a, changes_state) = case(m).unwrap_or_else(|| {
            panic!("method {m} of the XML has no case in this test: add one, and make it operators-only in the policy if it changes state")
        });
        assert!(
            changes_state,
            "{m}: only state-changing methods exist so far"
        );
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let m = m.as_str();
        let o = method("pocusdtest-user", m, &a);
        assert!(!o.status.success(), "{m} must be denied to a plain user");
        assert!(
            common::stderr(&o).contains("AccessDenied"),
            "{m}: {}",
            common::stderr(&o)
        );
    }
    assert_eq!(sys_get("pocusdtest-user", "State").status.success(), true);
    let o = method("pocusdtest-op", "SetThreshold", &["0.5"]);
    assert!(
        o.status.success(),
        "operator SetThreshold: {}",
        common::stderr(&o)
    );
    let o = method("pocusdtest-op", "Snapshot", &[]);
    assert!(
        o.status.success() && common::stdout(&o).contains(&snap_dir),
        "operator Snapshot: {}",
        common::stderr(&o)
    );
    // An operator reaches RollbackModel (the daemon answers; with no versions it refuses).
    let o = method("pocusdtest-op", "RollbackModel", &["--", "-1"]);
    assert!(
        common::stderr(&o).contains("no model version is current yet"),
        "operator RollbackModel: {}",
        common::stderr(&o)
    );
    // An operator reaches LoadExtraModel (the daemon answers: an aponeurosis model is no
    // fascicle model).
    let o = method(
        "pocusdtest-op",
        "LoadExtraModel",
        &["fascicle", model.to_str().unwrap()],
    );
    assert!(
        common::stderr(&o).contains("not a fascicle model"),
        "operator LoadExtraModel: {}",
        common::stderr(&o)
    );
    let o = method("pocusdtest-op", "Pause", &["true"]);
    assert!(o.status.success(), "operator Pause: {}", common::stderr(&o));
    wait_for("paused", Duration::from_secs(10), || {
        common::stdout(&sys_get("pocusdtest-op", "State")).contains("uint32 5")
    });
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn systemd_units_verify_and_score_and_the_package_puts_files_where_units_expect() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = tmp.path().join("deb");
    let o = Command::new("bash")
        .arg(common::script("package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_pocusd"), "--out"])
        .arg(&out)
        .args(["--version", "0.0.1+test", "--compression", "none"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "package.sh: {}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    let deb = out.join("pocusd_0.0.1+test_amd64.deb");
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        assert!(o.status.success(), "dpkg-deb -f: {}", common::stderr(&o));
        common::stdout(&o).trim().to_string()
    };
    assert_eq!(field("Version"), "0.0.1+test");
    // The libraries the binary links (dpkg-shlibdeps) and what no library reveals.
    let depends = field("Depends");
    for dep in [
        "libavformat59",
        "libc6",
        "dbus",
        "systemd",
        "init-system-helpers",
    ] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    let o = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(common::stdout(&o).trim(), "/etc/pocusd/pocusd.toml");
    let o = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg-deb -x: {}", common::stderr(&o));
    // A manual page per subcommand at any depth, completions for three shells.
    for page in [
        "pocusd",
        "pocusd-run",
        "pocusd-loop-nightly",
        "pocusd-dicom-worklist",
    ] {
        let p = root.join(format!("usr/share/man/man1/{page}.1.gz"));
        assert!(p.is_file(), "{page}.1.gz not packaged");
    }
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/pocusd")).unwrap();
    assert!(bash.contains("complete -F _pocusd") && bash.contains("nightly"));
    assert!(root
        .join("usr/share/zsh/vendor-completions/_pocusd")
        .is_file());
    assert!(root
        .join("usr/share/fish/vendor_completions.d/pocusd.fish")
        .is_file());
    assert!(root.join("usr/share/doc/pocusd/copyright").is_file());
    let units = root.join("usr/lib/systemd/system");
    let main = std::fs::read_to_string(units.join("pocusd.service")).unwrap();

    // Every path the units name exists in the tree.
    for unit in ["pocusd.service", "pocusd-train.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
            let exe = line
                .trim_start_matches("ExecStart=")
                .split_whitespace()
                .next()
                .unwrap();
            let p = root.join(exe.trim_start_matches('/'));
            let mode = std::fs::metadata(&p)
                .unwrap_or_else(|_| panic!("{unit}: {exe} not installed"))
                .permissions()
                .mode();
            assert!(mode & 0o111 != 0, "{exe} not executable");
        }
    }
    assert!(
        main.contains("User=pocusd")
            && main.contains("Type=notify")
            && main.contains("RestartPreventExitStatus=78")
    );
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/pocusd.conf")).unwrap();
    assert!(
        sysusers.lines().any(|l| l.starts_with("u pocusd "))
            && sysusers.contains("g pocusd-operators")
    );
    let tmpfiles = std::fs::read_to_string(root.join("usr/lib/tmpfiles.d/pocusd.conf")).unwrap();
    for sub in [
        "/var/lib/pocusd ",
        "/var/lib/pocusd/log ",
        "/var/lib/pocusd/snapshots ",
    ] {
        assert!(
            tmpfiles.lines().any(|l| l.starts_with("d ")
                && l.contains(sub)
                && l.contains("0750 pocusd pocusd")),
            "tmpfiles lacks {sub}"
        );
    }
    for f in [
        "usr/share/dbus-1/system.d/org.pocusd.Daemon1.conf",
        "usr/share/dbus-1/interfaces/org.pocusd.Daemon1.xml",
        "usr/share/pocusd/models/aponeurosis.onnx",
        "usr/lib/systemd/system/pocusd-train.timer",
        "etc/pocusd/pocusd.toml",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
    // Every shipped model is installed (the fascicle model was once left out of a list by hand).
    let mut shipped = 0;
    for e in std::fs::read_dir(repo().join("models")).unwrap() {
        let name = e.unwrap().file_name();
        if name.to_string_lossy().ends_with(".onnx") {
            shipped += 1;
            let p = root.join("usr/share/pocusd/models").join(&name);
            assert!(p.is_file(), "shipped model {name:?} not installed");
            assert!(
                p.with_extension("bpk").is_file(),
                "the unfolded copy of {name:?} not installed"
            );
        }
    }
    assert!(shipped >= 3, "models/ holds {shipped} ONNX files");
    // The installed (commented) config is valid and changes nothing.
    let o = common::run(&[
        "--config",
        root.join("etc/pocusd/pocusd.toml").to_str().unwrap(),
        "config",
        "check",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    // The installed binary finds the installed model layout from its own location.
    assert!(root.join("usr/bin/pocusd").is_file());

    // systemd's own checks, on the installed tree. A staging tree has no systemd of its own:
    // lend it the host's units (sysinit.target and friends, never replacing ours) and kill(1).
    let st = Command::new("cp")
        .args(["-rn", "/usr/lib/systemd/system/."])
        .arg(&units)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args([
            "/usr/lib/systemd/system/pocusd.service",
            "/usr/lib/systemd/system/pocusd-train.service",
            "/usr/lib/systemd/system/pocusd-train.timer",
        ])
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh installs systemd)");
    let text = format!("{}{}", common::stdout(&o), common::stderr(&o));
    assert!(o.status.success(), "systemd-analyze verify:\n{text}");
    assert!(
        !text.contains("pocusd"),
        "systemd-analyze verify complains:\n{text}"
    );
    for (unit, limit) in [("pocusd.service", 2.0), ("pocusd-train.service", 2.0)] {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(repo().join("systemd").join(unit))
            .output()
            .unwrap();
        let text = common::stdout(&o);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{text}{}", common::stderr(&o)));
        let score: f64 = line
            .split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(score <= limit, "{unit}: exposure {score} > {limit}");
    }
}
