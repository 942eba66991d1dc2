//! Shared by the daemon and viewer tests: a private `dbus-daemon`, a running `pocusd run`, and
//! `gdbus` helpers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;

pub const NAME: &str = "org.pocusd.Daemon1";
pub const PATH: &str = "/org/pocusd/Daemon1";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A private message bus.
pub struct Bus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// A bus with an open policy (like a session bus).
    pub fn session() -> Self {
        Self::start(|listen| {
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>{listen}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>"#
            )
        })
    }

    /// A bus configured like the system bus (Debian's system.conf, minus forking, the user
    /// switch and the system's policy folder) with the project's policy file included.
    pub fn system_like() -> Self {
        let conf = std::fs::read_to_string("/usr/share/dbus-1/system.conf")
            .expect("/usr/share/dbus-1/system.conf (package dbus-system-bus-common; scripts/setup.sh installs it)");
        let policy = repo().join("systemd/org.pocusd.Daemon1.conf");
        Self::start(|listen| {
            let mut out = String::new();
            for line in conf.lines() {
                let t = line.trim();
                if t.starts_with("<user>")
                    || t == "<fork/>"
                    || t.starts_with("<pidfile>")
                    || t == "<syslog/>"
                    || t.starts_with("<servicehelper>")
                    || t == "<standard_system_servicedirs/>"
                    || t.starts_with("<includedir>")
                    || t.starts_with("<include ")
                {
                    continue;
                }
                if t.starts_with("<listen>") {
                    out += &format!("  <listen>{listen}</listen>\n");
                    continue;
                }
                if t == "</busconfig>" {
                    out += &format!("  <include>{}</include>\n", policy.display());
                }
                out += line;
                out.push('\n');
            }
            out
        })
    }

    pub fn start(config: impl FnOnce(&str) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("bus");
        let listen = format!("unix:path={}", sock.display());
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config(&listen)).unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon runs (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        Bus {
            child,
            address: listen,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `pocusd run`.
pub struct Daemon {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Daemon {
    pub fn spawn(mut cmd: Command, log_dir: &Path) -> Self {
        let stderr = log_dir.join("daemon.stderr");
        let f = std::fs::File::create(&stderr).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("pocusd run starts");
        Daemon {
            child: Some(child),
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM and the exit status (within 20 s).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(20))
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pocusd did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pocusd run` on a bus, with its state folder in `state`.
pub fn daemon_cmd(bus: &Bus, session: bool, state: &Path, extra: &[&str]) -> Command {
    let mut c = common::pocusd();
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("POCUSD__STORAGE__DIR", state)
        .env("POCUSD__HTTP__LISTEN", "127.0.0.1:0")
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .current_dir(repo());
    if session {
        c.args(["run", "--session-bus"]);
    } else {
        c.arg("run");
    }
    c.args(extra);
    c
}

pub fn gdbus(bus: &Bus, args: &[&str]) -> Output {
    Command::new("gdbus")
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .expect("gdbus runs (scripts/setup.sh installs libglib2.0-bin)")
}

/// `pocusd run --session-bus --source SOURCE` with its state and log under `dir`.
pub fn demo_daemon(bus: &Bus, dir: &Path, source: &str) -> Daemon {
    Daemon::spawn(
        daemon_cmd(bus, true, &dir.join("state"), &["--source", source]),
        dir,
    )
}

/// `gdbus call` arguments for a method (`Interface.Member`) of the daemon on `--session` or `--system`.
pub fn call_args(bus_flag: &str, method: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "call",
        bus_flag,
        "--dest",
        NAME,
        "--object-path",
        PATH,
        "--method",
        method,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `pocusd status --session-bus` against the daemon on `bus`: the JSON object with `json`,
/// else the text as printed.
pub fn status(bus: &Bus, json: bool) -> (Option<serde_json::Value>, String) {
    let mut args = vec!["status", "--session-bus"];
    if json {
        args.push("--json");
    }
    let o = common::pocusd()
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "pocusd status: {}", common::stderr(&o));
    let text = common::stdout(&o);
    let v = json.then(|| serde_json::from_str(&text).unwrap());
    (v, text)
}

/// Whether org.pocusd.Daemon1 has an owner on `bus` (the session bus).
pub fn name_has_owner(bus: &Bus) -> bool {
    let o = gdbus(
        bus,
        &[
            "call",
            "--session",
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            "org.freedesktop.DBus.NameHasOwner",
            NAME,
        ],
    );
    common::stdout(&o).trim() == "(true,)"
}

/// Calls a method of org.pocusd.Daemon1 on the session bus.
pub fn call(bus: &Bus, method: &str, args: &[&str]) -> Output {
    let a = call_args("--session", &format!("org.pocusd.Daemon1.{method}"), args);
    gdbus(bus, &strs(&a))
}

/// Reads a property of org.pocusd.Daemon1 on the session bus (gdbus's text form).
pub fn get(bus: &Bus, prop: &str) -> String {
    let a = call_args(
        "--session",
        "org.freedesktop.DBus.Properties.Get",
        &["org.pocusd.Daemon1", prop],
    );
    let o = gdbus(bus, &strs(&a));
    assert!(o.status.success(), "Get {prop}: {}", common::stderr(&o));
    common::stdout(&o)
}

/// Waits until `f` is true (checked every 100 ms) or panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn state_of(bus: &Bus) -> u32 {
    // "(<uint32 1>,)"; 99 while the daemon is not on the bus yet.
    let a = call_args(
        "--session",
        "org.freedesktop.DBus.Properties.Get",
        &["org.pocusd.Daemon1", "State"],
    );
    let o = gdbus(bus, &strs(&a));
    if !o.status.success() {
        return 99;
    }
    let s = common::stdout(&o);
    s.trim()
        .trim_start_matches("(<uint32 ")
        .trim_end_matches(">,)")
        .parse()
        .unwrap_or(99)
}
