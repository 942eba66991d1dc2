//! The viewer's HTTP server inside `pocusd run` (axum on the supervisor's tokio runtime):
//! `/` the viewer page, `/stream.mjpg` (multipart/x-mixed-replace, one JPEG per part with
//! `X-Sequence` and `X-Timestamp-Us` headers), `/snapshot.jpg`, `/events` (Server-Sent Events: one
//! JSON object per published measurement, per state change and a status line twice a second),
//! `/metrics` (Prometheus text), `/healthz`, `POST /api/pause`, `POST /api/snapshot`, the
//! worklist (`GET /api/worklist`, `POST /api/worklist/refresh`, `POST /api/worklist/select`) and
//! `POST /api/exam` (the `SetExam` form).
//! Handlers read what the supervisor and the encoder publish and forward actions as the same
//! [`Command`]s D-Bus methods send, so this module owns no state. Must not depend on the pipeline's
//! threads.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::dbus::State;
use super::jpeg::Latest;
use crate::daemon::command::{ask, Command, Error as DbusError};

/// The viewer page (no external URLs: it works with no network).
pub const VIEWER_HTML: &str = include_str!("viewer.html");
/// The labelling page (`/review`), self-contained like the viewer.
pub const REVIEW_HTML: &str = include_str!("review.html");

const BOUNDARY: &str = "pocusdframe";

/// Latency histogram buckets, seconds.
pub const BUCKETS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.033, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A Prometheus histogram.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub counts: [u64; 13],
    pub sum_s: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe_ms(&mut self, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        let s = ms / 1e3;
        for (c, b) in self.counts.iter_mut().zip(BUCKETS_S) {
            if s <= b {
                *c += 1;
            }
        }
        self.sum_s += s;
        self.count += 1;
    }
}

/// What `/metrics` and `/healthz` report; written by the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub frames_total: u64,
    pub dropped_total: u64,
    /// Frames the source delivered broken and that were skipped.
    pub corrupt_total: u64,
    /// Frames an extra model's lane dropped (a newer frame arrived before it was free).
    pub extra_dropped_total: u64,
    /// Measured frames whose verdict was doubtful, by reason code (one frame counts under each
    /// of its reasons).
    pub doubtful_total: std::collections::BTreeMap<&'static str, u64>,
    /// The OpenIGTLink server's counters (`None`: `[igtl]` off).
    pub igtl: Option<super::igtl::IgtlStats>,
    /// Snapshots waiting in the DICOM spool (`None`: no `[dicom] store`).
    pub dicom_queue: Option<u64>,
    pub state: State,
    pub state_text: String,
    pub model_path: String,
    pub model_sha256: String,
    pub model_task: String,
    /// (stage, histogram): capture, preprocess, infer, postprocess, publish, end_to_end.
    pub stages: Vec<(&'static str, Histogram)>,
    /// The last events, sent first to a new `/events` client.
    pub last_state_event: Option<Arc<str>>,
    pub last_measurement_event: Option<Arc<str>>,
    /// The last status event (fps, latency, region of interest), also sent to a new client first.
    pub last_status_event: Option<Arc<str>>,
}

/// Shared by the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub jpeg: Latest,
    pub events: broadcast::Sender<Arc<str>>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub commands: mpsc::Sender<Command>,
    pub token: Option<String>,
    /// One permit per streaming client (`http.max_clients`); held until the client leaves.
    pub clients: Arc<tokio::sync::Semaphore>,
    pub max_clients: usize,
    /// The review queue (snapshots) and the site data folder accepted labels go to.
    pub review: Arc<crate::daemon::review::Review>,
    /// The Modality Worklist (`[dicom] worklist`; read here, selected through [`Command`]s).
    pub worklist: Option<Arc<crate::daemon::worklist::Worklist>>,
    /// Who may do what: off loopback, every route but `/healthz`, `/metrics` and `/login`
    /// needs the token (header) or a login session (cookie).
    pub access: Arc<Access>,
}

/// The viewer's access rule off loopback: sessions made by `/login`, and the failed attempts
/// that rate-limit it.
#[derive(Debug, Default)]
pub struct Access {
    /// The listener is on a network address (not loopback).
    pub network: bool,
    /// Served over TLS (cookies are `Secure`, responses carry HSTS).
    pub tls: bool,
    sessions: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    failures: Mutex<std::collections::HashMap<std::net::IpAddr, Vec<std::time::Instant>>>,
}

/// How long a login session lasts.
const SESSION_LIFE: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// Failed logins from one address within [`FAILURE_WINDOW`] before it must wait.
const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The session cookie's name.
const COOKIE: &str = "pocusd_session";

/// Equal in time independent of where they differ (the token comparison).
fn same(a: &[u8], b: &[u8]) -> bool {
    let diff = (0..a.len().max(b.len())).fold(a.len() ^ b.len(), |d, i| {
        d | (*a.get(i).unwrap_or(&0) ^ *b.get(i).unwrap_or(&0)) as usize
    });
    diff == 0
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        // Never a predictable session id: no id at all (the login then fails, and says so).
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Access {
    pub fn new(network: bool, tls: bool) -> Self {
        Self {
            network,
            tls,
            ..Default::default()
        }
    }

    fn session_ok(&self, headers: &HeaderMap) -> bool {
        let Some(id) = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| {
                c.trim()
                    .strip_prefix(&format!("{COOKIE}="))
                    .map(str::to_string)
            })
            .next()
        else {
            return false;
        };
        let now = std::time::Instant::now();
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .any(|(k, until)| same(k.as_bytes(), id.as_bytes()) && *until > now)
    }

    fn new_session(&self) -> Option<String> {
        let id = random_hex(32);
        if id.is_empty() {
            return None;
        }
        let now = std::time::Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, until| *until > now);
        sessions.insert(id.clone(), now + SESSION_LIFE);
        Some(id)
    }

    /// Failed attempts from `ip` within the window (after dropping older ones).
    fn recent_failures(&self, ip: std::net::IpAddr) -> usize {
        let now = std::time::Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let v = f.entry(ip).or_default();
        v.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
        v.len()
    }

    fn fail(&self, ip: std::net::IpAddr) -> usize {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let v = f.entry(ip).or_default();
        v.push(std::time::Instant::now());
        v.len()
    }
}

/// A streaming client's permit, or the 503 that refuses one more.
fn client_permit(s: &HttpState) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    s.clients.clone().try_acquire_owned().map_err(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!(
                "{} streaming clients are connected, the most this viewer serves (http.max_clients); try again when one leaves\n",
                s.max_clients
            ),
        )
            .into_response()
    })
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(viewer))
        .route("/stream.mjpg", get(stream_mjpg))
        .route("/snapshot.jpg", get(snapshot_jpg))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/pause", post(api_pause))
        .route("/api/snapshot", post(api_snapshot))
        .route("/api/exam", post(api_exam))
        .route("/api/worklist", get(api_worklist))
        .route("/api/worklist/refresh", post(api_worklist_refresh))
        .route("/api/worklist/select", post(api_worklist_select))
        .route("/login", get(login_page).post(login))
        .route("/review", get(review_page))
        .route("/api/review", get(api_review_list))
        .route(
            "/api/review/{id}/{file}",
            get(api_review_file).post(api_review_decide),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn viewer() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        VIEWER_HTML,
    )
}

/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener` until the task is dropped: HTTP/1.1 through hyper with a
/// [`HEADER_READ_TIMEOUT`] (a connection that never completes its headers, or sends only blank
/// lines, is closed), one task per connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<super::tls::Tls>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors, or the like: wait a moment instead of spinning.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, app).await,
                Some(tls) => {
                    // A TLS connection opens with a handshake record (0x16); anything else is
                    // plain HTTP, answered in plain words and closed.
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await;
                    if !matches!(peeked, Ok(Ok(1))) {
                        return;
                    }
                    if first[0] != 0x16 {
                        let _ = refuse_plain(stream).await;
                        return;
                    }
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, peer, app).await,
                        // A failed handshake (an untrusted certificate, a scanner) says nothing.
                        _ => {}
                    }
                }
            }
        });
    }
}

/// The answer to plain HTTP on the TLS listener.
async fn refuse_plain(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let body = "this viewer serves HTTPS only (it carries patient data over the network): open https:// instead of http://\n";
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Where a request came from (for the login's rate limit and its log lines).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves one connection (plain or TLS) with HTTP/1.1, each request tagged with its [`Peer`].
async fn serve_connection<S>(stream: S, peer: std::net::SocketAddr, app: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            tower::ServiceExt::oneshot(app.clone(), req)
        });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let _ = b
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn part_header(f: &super::jpeg::JpegFrame) -> Bytes {
    Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nX-Sequence: {}\r\nX-Timestamp-Us: {}\r\n\r\n",
        f.bytes.len(),
        f.seq,
        f.timestamp_us
    ))
}

async fn stream_mjpg(axum::extract::State(s): axum::extract::State<HttpState>) -> Response {
    let permit = match client_permit(&s) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let mut rx = s.jpeg.clone();
    rx.mark_changed();
    // Each poll waits for the newest frame; a client that does not read is simply not polled,
    // and the watch channel keeps only the newest frame, so nothing queues up for it. The permit
    // lives in the stream's state: it is given back when the client's body is dropped.
    let parts = futures_util::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        loop {
            rx.changed().await.ok()?;
            let f = rx.borrow_and_update().clone();
            if let Some(f) = f {
                let chunks = vec![
                    Ok::<_, Infallible>(part_header(&f)),
                    Ok(f.bytes.clone()),
                    Ok(Bytes::from_static(b"\r\n")),
                ];
                return Some((futures_util::stream::iter(chunks), (rx, permit)));
            }
        }
    })
    .flatten();
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
        )
        .header(header::CACHE_CONTROL, "no-cache, no-store")
        .body(Body::from_stream(parts))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn snapshot_jpg(axum::extract::State(s): axum::extract::State<HttpState>) -> Response {
    let f = s.jpeg.borrow().clone();
    match f {
        Some(f) => (
            [
                (header::CONTENT_TYPE, "image/jpeg".to_string()),
                (header::CACHE_CONTROL, "no-cache".to_string()),
                (
                    header::HeaderName::from_static("x-sequence"),
                    f.seq.to_string(),
                ),
            ],
            f.bytes.clone(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no overlay yet: no frame has been processed (no signal, paused, or still starting)\n",
        )
            .into_response(),
    }
}

async fn events(axum::extract::State(s): axum::extract::State<HttpState>) -> Response {
    let permit = match client_permit(&s) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let rx = s.events.subscribe();
    let first: Vec<Arc<str>> = {
        let m = s.metrics.lock().unwrap_or_else(|p| p.into_inner());
        [
            m.last_state_event.clone(),
            m.last_status_event.clone(),
            m.last_measurement_event.clone(),
        ]
        .into_iter()
        .flatten()
        .collect()
    };
    let sse = |json: &str| Bytes::from(format!("data: {json}\n\n"));
    let head = futures_util::stream::iter(
        std::iter::once(Bytes::from_static(b"retry: 1000\n\n"))
            .chain(first.iter().map(|e| sse(e)))
            .map(Ok::<_, Infallible>)
            .collect::<Vec<_>>(),
    );
    let live = futures_util::stream::unfold((rx, permit), move |(mut rx, permit)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((Ok::<_, Infallible>(sse(&e)), (rx, permit))),
                // A slow client skips what it missed; it never holds the others back.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(head.chain(live)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus exposition text.
pub fn metrics_text(m: &Metrics) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# HELP pocusd_frames_total Frames processed.");
    let _ = writeln!(t, "# TYPE pocusd_frames_total counter");
    let _ = writeln!(t, "pocusd_frames_total {}", m.frames_total);
    let _ = writeln!(
        t,
        "# HELP pocusd_dropped_frames_total Frames dropped because a later one arrived first."
    );
    let _ = writeln!(t, "# TYPE pocusd_dropped_frames_total counter");
    let _ = writeln!(t, "pocusd_dropped_frames_total {}", m.dropped_total);
    let _ = writeln!(
        t,
        "# HELP pocusd_frames_corrupt_total Frames the source delivered broken (skipped and counted)."
    );
    let _ = writeln!(t, "# TYPE pocusd_frames_corrupt_total counter");
    let _ = writeln!(t, "pocusd_frames_corrupt_total {}", m.corrupt_total);
    let _ = writeln!(
        t,
        "# HELP pocusd_extra_jobs_dropped_total Frames an extra model (e.g. fascicles) skipped because a newer one arrived first."
    );
    let _ = writeln!(t, "# TYPE pocusd_extra_jobs_dropped_total counter");
    let _ = writeln!(
        t,
        "pocusd_extra_jobs_dropped_total {}",
        m.extra_dropped_total
    );
    let _ = writeln!(
        t,
        "# HELP pocusd_doubtful_frames_total Measured frames whose numbers were doubtful, by reason (README.md lists the codes)."
    );
    let _ = writeln!(t, "# TYPE pocusd_doubtful_frames_total counter");
    for d in crate::postprocess::quality::Doubt::ALL {
        let _ = writeln!(
            t,
            "pocusd_doubtful_frames_total{{reason=\"{}\"}} {}",
            d.as_str(),
            m.doubtful_total.get(d.as_str()).copied().unwrap_or(0)
        );
    }
    if let Some(g) = &m.igtl {
        let _ = writeln!(
            t,
            "# HELP pocusd_igtl_clients OpenIGTLink clients connected."
        );
        let _ = writeln!(t, "# TYPE pocusd_igtl_clients gauge");
        let _ = writeln!(t, "pocusd_igtl_clients {}", g.clients);
        let _ = writeln!(t, "# HELP pocusd_igtl_frames_sent_total Frames written to OpenIGTLink clients (once per client).");
        let _ = writeln!(t, "# TYPE pocusd_igtl_frames_sent_total counter");
        let _ = writeln!(t, "pocusd_igtl_frames_sent_total {}", g.frames_sent);
        let _ = writeln!(t, "# HELP pocusd_igtl_frames_dropped_total Frames an OpenIGTLink client did not read before a newer one (latest wins).");
        let _ = writeln!(t, "# TYPE pocusd_igtl_frames_dropped_total counter");
        let _ = writeln!(t, "pocusd_igtl_frames_dropped_total {}", g.frames_dropped);
    }
    if let Some(q) = m.dicom_queue {
        let _ = writeln!(
            t,
            "# HELP pocusd_dicom_queue Snapshots waiting in the DICOM spool."
        );
        let _ = writeln!(t, "# TYPE pocusd_dicom_queue gauge");
        let _ = writeln!(t, "pocusd_dicom_queue {q}");
    }
    let _ = writeln!(t, "# HELP pocusd_stage_latency_seconds Time per pipeline stage; end_to_end is capture to publication.");
    let _ = writeln!(t, "# TYPE pocusd_stage_latency_seconds histogram");
    for (stage, h) in &m.stages {
        for (c, b) in h.counts.iter().zip(BUCKETS_S) {
            let _ = writeln!(
                t,
                "pocusd_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {c}"
            );
        }
        let _ = writeln!(
            t,
            "pocusd_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            t,
            "pocusd_stage_latency_seconds_sum{{stage=\"{stage}\"}} {}",
            h.sum_s
        );
        let _ = writeln!(
            t,
            "pocusd_stage_latency_seconds_count{{stage=\"{stage}\"}} {}",
            h.count
        );
    }
    let _ = writeln!(t, "# HELP pocusd_state Daemon state: 0 starting, 1 streaming, 2 no_signal, 3 frozen, 4 reconnecting, 5 paused, 6 error.");
    let _ = writeln!(t, "# TYPE pocusd_state gauge");
    let _ = writeln!(t, "pocusd_state {}", m.state.code());
    let _ = writeln!(t, "# HELP pocusd_model_info The running model.");
    let _ = writeln!(t, "# TYPE pocusd_model_info gauge");
    let _ = writeln!(
        t,
        "pocusd_model_info{{path=\"{}\",sha256=\"{}\",task=\"{}\"}} 1",
        label(&m.model_path),
        label(&m.model_sha256),
        label(&m.model_task)
    );
    t
}

async fn metrics(axum::extract::State(s): axum::extract::State<HttpState>) -> impl IntoResponse {
    let text = metrics_text(&s.metrics.lock().unwrap_or_else(|p| p.into_inner()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn healthz(axum::extract::State(s): axum::extract::State<HttpState>) -> impl IntoResponse {
    let (state, text) = {
        let m = s.metrics.lock().unwrap_or_else(|p| p.into_inner());
        (m.state, m.state_text.clone())
    };
    let code = if state == State::Error {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, format!("{}\n{text}\n", state.as_str()))
}

fn authorised(s: &HttpState, headers: &HeaderMap, query_token: Option<&str>) -> bool {
    let Some(token) = &s.token else {
        return true;
    };
    // Off loopback [`guard`] let the request through only with the token or a session.
    if s.access.network {
        return true;
    }
    let matches = |t: Option<&str>| t.is_some_and(|t| same(t.as_bytes(), token.as_bytes()));
    matches(bearer(headers)) || matches(query_token)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Off loopback: every route but `/healthz`, `/metrics` and `/login` needs the token in the
/// `Authorization` header or a login session; a token in the URL is refused, saying why. Over
/// TLS every response carries HSTS.
async fn guard(
    axum::extract::State(s): axum::extract::State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/metrics" | "/login");
    if s.access.network && !open {
        let in_url = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")));
        if in_url {
            return (
                StatusCode::UNAUTHORIZED,
                "a token in the URL is refused on a network address (URLs end up in browser history, proxy logs and Referer headers): send \"Authorization: Bearer TOKEN\", or log in once at /login\n",
            )
                .into_response();
        }
        // A wrong bearer token counts as a failed attempt like a wrong login: after
        // MAX_FAILURES in a minute the address waits, whatever it sends.
        let ip = req.extensions().get::<Peer>().map(|p| p.0.ip());
        if let Some(ip) = ip {
            if s.access.recent_failures(ip) >= MAX_FAILURES {
                return too_many();
            }
        }
        let given = bearer(req.headers());
        let token_ok = match (&s.token, given) {
            (Some(t), Some(b)) => same(b.as_bytes(), t.as_bytes()),
            _ => false,
        };
        if let (Some(ip), Some(_), false) = (ip, given, token_ok) {
            let n = s.access.fail(ip);
            eprintln!("pocusd: wrong viewer token from {ip} ({n} in the last minute)");
        }
        if !token_ok && !s.access.session_ok(req.headers()) {
            let next = urlencode(path);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                format!(
                    "<!DOCTYPE html><title>pocusd: log in</title><p>This viewer needs its token: <a href=\"/login?next={next}\">log in</a>, or send \"Authorization: Bearer TOKEN\".</p>\n"
                ),
            )
                .into_response();
        }
    }
    let mut r = next.run(req).await;
    if s.access.tls {
        r.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path on this server (an open redirect would send the session elsewhere).
fn local_path(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".into())
}

/// The answer to an address over its failed attempts.
fn too_many() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "60")],
        "too many failed attempts from this address (wrong token): wait a minute\n",
    )
        .into_response()
}

/// `GET /login`: the form that takes the token once.
async fn login_page(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    let next = local_path(q.next);
    let esc = next
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>pocusd: log in</title></head>\
<body style=\"font-family: system-ui, sans-serif; background: #101418; color: #e8eef2; display: flex; justify-content: center; padding-top: 15vh\">\
<form method=\"post\" action=\"/login\"><h1>pocusd</h1><p>The viewer's token (http.token):</p>\
<input type=\"hidden\" name=\"next\" value=\"{esc}\"><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" autofocus style=\"font-size: 1.2rem\">\
<button type=\"submit\" style=\"font-size: 1.2rem\">Log in</button></form></body></html>\n"
        ),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /login` (form: `token`, `next`): a session cookie and a redirect to `next`, or 401;
/// after [`MAX_FAILURES`] failures from one address within a minute, 429 until it passes.
/// Failures are logged with the address, never with what was typed.
async fn login(
    axum::extract::State(s): axum::extract::State<HttpState>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    body: Bytes,
) -> Response {
    let ip = peer.ip();
    if s.access.recent_failures(ip) >= MAX_FAILURES {
        return too_many();
    }
    let form: Option<LoginForm> = serde_urlencoded::from_bytes(&body).ok();
    let ok = match (&s.token, &form) {
        (Some(t), Some(f)) => same(f.token.as_bytes(), t.as_bytes()),
        // No token configured (loopback only): nothing to log in to.
        (None, _) => true,
        _ => false,
    };
    if !ok {
        let n = s.access.fail(ip);
        eprintln!("pocusd: viewer login failed from {ip} ({n} in the last minute)");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><title>pocusd: log in</title><p>Wrong token. <a href=\"/login\">Try again</a>.</p>\n",
        )
            .into_response();
    }
    let Some(id) = s.access.new_session() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot make a session id (/dev/urandom unreadable); send the token in the Authorization header\n",
        )
            .into_response();
    };
    eprintln!("pocusd: viewer login from {ip}");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_LIFE.as_secs(),
        if s.access.tls { "; Secure" } else { "" }
    );
    let to = local_path(form.and_then(|f| f.next));
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, to)],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct PauseQuery {
    paused: Option<String>,
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn dbus_error_response(e: DbusError) -> Response {
    let (code, msg) = match e {
        DbusError::InvalidArgument(m) => (StatusCode::BAD_REQUEST, m),
        DbusError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        DbusError::ModelRejected(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
        DbusError::Io(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    (code, axum_json(&serde_json::json!({ "error": msg }))).into_response()
}

fn axum_json(v: &serde_json::Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

const UNAUTHORISED: &str = "this action needs the viewer token (http.token): send \"Authorization: Bearer TOKEN\" or ?token=TOKEN\n";

async fn api_pause(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<PauseQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    // Changing the live pipeline needs an explicit answer: no default.
    let paused = match q.paused.as_deref() {
        Some("true") => true,
        Some("false") => false,
        other => {
            let found = match other {
                None => "it is missing".to_string(),
                Some(v) => format!("got {:?}", v.chars().take(40).collect::<String>()),
            };
            return (
                StatusCode::BAD_REQUEST,
                axum_json(&serde_json::json!({
                    "error": format!("query parameter `paused` must be true or false ({found}), e.g. POST /api/pause?paused=true")
                })),
            )
                .into_response();
        }
    };
    match ask(&s.commands, |tx| Command::Pause(paused, tx)).await {
        Ok(()) => axum_json(&serde_json::json!({ "paused": paused })).into_response(),
        Err(e) => dbus_error_response(e),
    }
}

async fn api_snapshot(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TokenQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    match ask(&s.commands, Command::Snapshot).await {
        Ok(path) => axum_json(&serde_json::json!({ "path": path })).into_response(),
        Err(e) => dbus_error_response(e),
    }
}

/// `GET /api/worklist`: `{"configured", "peer", "items": [...], "last_answer_us", "last_query_us",
/// "error"}`; the items' keys are the DICOM keywords (as `pocusd dicom worklist --json`). It
/// holds patient names, so it follows the viewer's token rule like the actions.
async fn api_worklist(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TokenQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    let v = match &s.worklist {
        Some(w) => {
            let mut v = serde_json::to_value(w.state()).unwrap_or_default();
            v["configured"] = serde_json::Value::Bool(true);
            v
        }
        None => serde_json::json!({"configured": false, "items": []}),
    };
    axum_json(&v).into_response()
}

async fn api_worklist_refresh(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TokenQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    match ask(&s.commands, Command::RefreshWorklist).await {
        Ok(()) => axum_json(&serde_json::json!({"refreshing": true})).into_response(),
        Err(e) => dbus_error_response(e),
    }
}

#[derive(serde::Deserialize)]
struct SelectQuery {
    token: Option<String>,
    accession: Option<String>,
    step_id: Option<String>,
}

/// `POST /api/worklist/select?accession=A&step_id=S`: `SelectWorklistItem`.
async fn api_worklist_select(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<SelectQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    let (Some(accession), Some(step_id)) = (q.accession, q.step_id) else {
        return (
            StatusCode::BAD_REQUEST,
            "give the item's accession number and scheduled procedure step id: POST /api/worklist/select?accession=A&step_id=S\n",
        )
            .into_response();
    };
    match ask(&s.commands, |tx| {
        Command::SelectWorklistItem(accession, step_id, tx)
    })
    .await
    {
        Ok(()) => axum_json(&serde_json::json!({"selected": true})).into_response(),
        Err(e) => dbus_error_response(e),
    }
}

#[derive(serde::Deserialize)]
struct ExamQuery {
    token: Option<String>,
    patient_id: Option<String>,
    patient_name: Option<String>,
    accession: Option<String>,
}

/// `POST /api/exam?patient_id=&patient_name=&accession=`: `SetExam`, for carts without a
/// worklist.
async fn api_exam(
    axum::extract::State(s): axum::extract::State<HttpState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ExamQuery>,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    let (id, name, acc) = (
        q.patient_id.unwrap_or_default(),
        q.patient_name.unwrap_or_default(),
        q.accession.unwrap_or_default(),
    );
    match ask(&s.commands, |tx| Command::SetExam(id, name, acc, tx)).await {
        Ok(()) => axum_json(&serde_json::json!({"exam": true})).into_response(),
        Err(e) => dbus_error_response(e),
    }
}

async fn review_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        REVIEW_HTML,
    )
}

fn review_error(e: crate::daemon::review::ReviewError) -> Response {
    use crate::daemon::review::ReviewError as E;
    let code = match &e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::BadRequest(_) => StatusCode::BAD_REQUEST,
        E::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        code,
        axum_json(&serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn api_review_list(axum::extract::State(s): axum::extract::State<HttpState>) -> Response {
    let r = s.review.clone();
    match tokio::task::spawn_blocking(move || r.list()).await {
        Ok(items) => axum_json(&serde_json::json!({ "snapshots": items })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /api/review/ID/frame.png` and `/mask.png`: the snapshot's own files.
async fn api_review_file(
    axum::extract::State(s): axum::extract::State<HttpState>,
    axum::extract::Path((id, file)): axum::extract::Path<(String, String)>,
) -> Response {
    if !matches!(file.as_str(), "frame.png" | "mask.png" | "overlay.png") {
        return (
            StatusCode::NOT_FOUND,
            "frame.png, mask.png or overlay.png\n",
        )
            .into_response();
    }
    let r = s.review.clone();
    match tokio::task::spawn_blocking(move || r.file(&id, &file)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => review_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /api/review/ID/accept` (body: the corrected mask as image/png, the frame's size) and
/// `POST /api/review/ID/reject`; both follow the viewer's token rule.
async fn api_review_decide(
    axum::extract::State(s): axum::extract::State<HttpState>,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TokenQuery>,
    body: Bytes,
) -> Response {
    if !authorised(&s, &headers, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, UNAUTHORISED).into_response();
    }
    let r = s.review.clone();
    let done = match action.as_str() {
        "accept" => {
            tokio::task::spawn_blocking(move || {
                r.accept(&id, &body)
                    .map(|name| serde_json::json!({ "accepted": name }))
            })
            .await
        }
        "reject" => {
            tokio::task::spawn_blocking(move || {
                r.reject(&id)
                    .map(|()| serde_json::json!({ "rejected": id }))
            })
            .await
        }
        _ => return (
            StatusCode::NOT_FOUND,
            "POST /api/review/ID/accept (body: the mask as image/png) or /api/review/ID/reject\n",
        )
            .into_response(),
    };
    match done {
        Ok(Ok(v)) => axum_json(&v).into_response(),
        Ok(Err(e)) => review_error(e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_names_the_series() {
        let mut h = Histogram::default();
        for ms in [0.5, 3.0, 12.0, 40.0, 2000.0] {
            h.observe_ms(ms);
        }
        assert_eq!(h.counts[0], 1); // <= 1 ms
        assert_eq!(h.counts[3], 2); // <= 10 ms
        assert_eq!(h.counts[12], 4); // <= 1 s
        assert_eq!(h.count, 5);
        let m = Metrics {
            frames_total: 7,
            stages: vec![("infer", h)],
            model_sha256: "ab\"c".into(),
            ..Default::default()
        };
        let t = metrics_text(&m);
        assert!(t.contains("pocusd_frames_total 7"));
        assert!(t.contains("pocusd_stage_latency_seconds_bucket{stage=\"infer\",le=\"+Inf\"} 5"));
        assert!(t.contains("pocusd_stage_latency_seconds_count{stage=\"infer\"} 5"));
        assert!(t.contains("sha256=\"ab\\\"c\""));
        assert!(t.contains("pocusd_state 0"));
    }
}
