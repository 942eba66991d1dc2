//! The OpenIGTLink server of `pocusd run` (`[igtl]`), for 3D Slicer's OpenIGTLinkIF, PLUS-style
//! clients and pyigtl. For every frame the daemon hands it, every connected client gets three
//! messages: `IMAGE` "Image" (the ultrasound region as uint8 grey, spacing in mm when calibrated,
//! else 1), `IMAGE` "Prediction" (the mask as uint8 labels, same geometry) and `STRING`
//! "Measurement" (the SSE event's JSON). Messages use header version 2 (the extended header of
//! protocol 3, with a `seq` metadata entry), big-endian numbers, a CRC-64 (ECMA-182) of the body and
//! the frame's capture time as timestamp. The three messages of a frame are encoded once and shared
//! by all clients; each client has its own writer thread behind a "latest value wins" slot, so a
//! slow client gets the newest frame (the rest dropped and counted), a client that leaves is
//! forgotten, and the caller never waits. What clients send is read and discarded.
//! Must not depend on the pipeline's internals, D-Bus or HTTP.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::slot::Slot;

/// Bytes of the fixed message header.
pub const HEADER_LEN: usize = 58;
/// Bytes of the extended header (header version 2).
pub const EXTENDED_HEADER_LEN: usize = 12;
/// Bytes of the IMAGE content's own header, before the pixels.
pub const IMAGE_HEADER_LEN: usize = 72;
/// The header version written: 2, with the extended header and metadata.
pub const HEADER_VERSION: u16 = 2;
/// Device names (Slicer makes one node per name).
pub const DEVICE_IMAGE: &str = "Image";
pub const DEVICE_PREDICTION: &str = "Prediction";
pub const DEVICE_MEASUREMENT: &str = "Measurement";

/// IANA MIBenum of UTF-8, the STRING message's encoding field.
const MIB_UTF8: u16 = 106;
/// IMAGE scalar type uint8.
const SCALAR_UINT8: u8 = 3;
/// IMAGE coordinate system: 2 = LPS (Slicer's file convention; x to the patient's left).
const COORD_LPS: u8 = 2;

/// What cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum IgtlError {
    #[error("OpenIGTLink {field} of {len} bytes is longer than the protocol's {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("image of {width}x{height} pixels does not fit an OpenIGTLink IMAGE (65535 a side) or has {len} bytes")]
    BadImage {
        width: usize,
        height: usize,
        len: usize,
    },
}

/// CRC-64 as OpenIGTLink uses it: ECMA-182 polynomial 0x42F0E1EBA9EA3693, initial value 0, no
/// reflection, no final xor ("123456789" gives 0x6C40DF5F0B497347).
pub fn crc64(data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = (i as u64) << 56;
            for _ in 0..8 {
                c = if c & (1 << 63) != 0 {
                    (c << 1) ^ 0x42F0_E1EB_A9EA_3693
                } else {
                    c << 1
                };
            }
            *e = c;
        }
        t
    });
    data.iter().fold(0u64, |crc, &b| {
        table[(((crc >> 56) as u8) ^ b) as usize] ^ (crc << 8)
    })
}

/// The protocol's 64-bit timestamp of a CLOCK_REALTIME time in µs: whole seconds, then the
/// fraction of a second in units of 2^-32 s.
pub fn timestamp(us: i64) -> (u32, u32) {
    let us = us.max(0) as u64;
    let secs = us / 1_000_000;
    let frac = ((us % 1_000_000) << 32) / 1_000_000;
    (secs as u32, frac as u32)
}

/// Appends one whole message (header, extended header, content, metadata) to `out`.
pub fn encode_message(
    out: &mut Vec<u8>,
    kind: &str,
    device: &str,
    timestamp_us: i64,
    message_id: u32,
    metadata: &[(&str, &str)],
    content: &[u8],
) -> Result<(), IgtlError> {
    let fixed = |field, len, max| {
        if len > max {
            Err(IgtlError::TooLong { field, len, max })
        } else {
            Ok(())
        }
    };
    fixed("type name", kind.len(), 12)?;
    fixed("device name", device.len(), 20)?;
    fixed("metadata entries", metadata.len(), u16::MAX as usize)?;
    let mut meta_header = Vec::with_capacity(2 + 8 * metadata.len());
    let mut meta_body = Vec::new();
    meta_header.extend_from_slice(&(metadata.len() as u16).to_be_bytes());
    for (k, v) in metadata {
        fixed("metadata key", k.len(), u16::MAX as usize)?;
        meta_header.extend_from_slice(&(k.len() as u16).to_be_bytes());
        meta_header.extend_from_slice(&MIB_UTF8.to_be_bytes());
        meta_header.extend_from_slice(&(v.len() as u32).to_be_bytes());
        meta_body.extend_from_slice(k.as_bytes());
        meta_body.extend_from_slice(v.as_bytes());
    }
    fixed("metadata header", meta_header.len(), u16::MAX as usize)?;
    let body_len = EXTENDED_HEADER_LEN + content.len() + meta_header.len() + meta_body.len();
    let start = out.len();
    out.reserve(HEADER_LEN + body_len);
    out.extend_from_slice(&HEADER_VERSION.to_be_bytes());
    let mut name = [0u8; 12];
    name[..kind.len()].copy_from_slice(kind.as_bytes());
    out.extend_from_slice(&name);
    let mut dev = [0u8; 20];
    dev[..device.len()].copy_from_slice(device.as_bytes());
    out.extend_from_slice(&dev);
    let (secs, frac) = timestamp(timestamp_us);
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&frac.to_be_bytes());
    out.extend_from_slice(&(body_len as u64).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let body_at = out.len();
    out.extend_from_slice(&(EXTENDED_HEADER_LEN as u16).to_be_bytes());
    out.extend_from_slice(&(meta_header.len() as u16).to_be_bytes());
    out.extend_from_slice(&(meta_body.len() as u32).to_be_bytes());
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(content);
    out.extend_from_slice(&meta_header);
    out.extend_from_slice(&meta_body);
    let crc = crc64(&out[body_at..]);
    out[crc_at..crc_at + 8].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(out.len() - start, HEADER_LEN + body_len);
    Ok(())
}

/// The content of an IMAGE message: one uint8 slice of `width` x `height` pixels (rows top to
/// bottom), `spacing_mm` (x, y) along the image's columns and rows, placed with its first pixel
/// at the origin (the protocol stores the centre: half the extent from there).
pub fn image_content(
    width: usize,
    height: usize,
    spacing_mm: (f64, f64),
    pixels: &[u8],
) -> Result<Vec<u8>, IgtlError> {
    if width == 0
        || height == 0
        || width > u16::MAX as usize
        || height > u16::MAX as usize
        || pixels.len() != width * height
    {
        return Err(IgtlError::BadImage {
            width,
            height,
            len: pixels.len(),
        });
    }
    let (sx, sy) = (spacing_mm.0 as f32, spacing_mm.1 as f32);
    // The slice thickness: the in-plane spacing, so a volume node looks square in 3D.
    let sz = sx;
    let mut c = Vec::with_capacity(IMAGE_HEADER_LEN + pixels.len());
    c.extend_from_slice(&1u16.to_be_bytes()); // IMAGE content version
    c.push(1); // scalar components
    c.push(SCALAR_UINT8);
    c.push(1); // endianness of the pixels (uint8: either)
    c.push(COORD_LPS);
    for n in [width as u16, height as u16, 1u16] {
        c.extend_from_slice(&n.to_be_bytes());
    }
    let centre = [
        (width as f32 - 1.0) / 2.0 * sx,
        (height as f32 - 1.0) / 2.0 * sy,
        0.0,
    ];
    // Direction columns scaled by spacing (t, s, n), then the centre.
    let matrix = [sx, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, sz];
    for v in matrix.iter().chain(centre.iter()) {
        c.extend_from_slice(&v.to_be_bytes());
    }
    for n in [0u16, 0, 0, width as u16, height as u16, 1] {
        c.extend_from_slice(&n.to_be_bytes());
    }
    c.extend_from_slice(pixels);
    Ok(c)
}

/// The content of a STRING message (UTF-8).
pub fn string_content(text: &str) -> Result<Vec<u8>, IgtlError> {
    if text.len() > u16::MAX as usize {
        return Err(IgtlError::TooLong {
            field: "STRING",
            len: text.len(),
            max: u16::MAX as usize,
        });
    }
    let mut c = Vec::with_capacity(4 + text.len());
    c.extend_from_slice(&MIB_UTF8.to_be_bytes());
    c.extend_from_slice(&(text.len() as u16).to_be_bytes());
    c.extend_from_slice(text.as_bytes());
    Ok(c)
}

/// A uint8 image for an IMAGE message.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    pub width: usize,
    pub height: usize,
    pub pixels: &'a [u8],
}

/// One frame's worth of messages to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub seq: u64,
    /// Capture time, CLOCK_REALTIME µs.
    pub timestamp_us: i64,
    /// The ultrasound region, grey.
    pub image: Plane<'a>,
    /// The mask over the same region, uint8 labels (0 background, 1 the model's structure).
    pub labels: Plane<'a>,
    /// Millimetres per pixel (x, y); (1, 1) when the frame is not calibrated.
    pub spacing_mm: (f64, f64),
    /// The measurement record, as the SSE event's JSON.
    pub event: &'a str,
}

/// Encodes the three messages of a frame, back to back ("Image", "Prediction", "Measurement").
/// Message ids are `3 * seq + k` (wrapping at 2^32), the same for every client.
pub fn encode_frame(o: &Outgoing<'_>) -> Result<Vec<u8>, IgtlError> {
    let seq = o.seq.to_string();
    let meta = [("seq", seq.as_str())];
    let id = |k: u64| (o.seq.wrapping_mul(3).wrapping_add(k)) as u32;
    let mut out = Vec::new();
    let img = image_content(o.image.width, o.image.height, o.spacing_mm, o.image.pixels)?;
    encode_message(
        &mut out,
        "IMAGE",
        DEVICE_IMAGE,
        o.timestamp_us,
        id(0),
        &meta,
        &img,
    )?;
    let lab = image_content(
        o.labels.width,
        o.labels.height,
        o.spacing_mm,
        o.labels.pixels,
    )?;
    encode_message(
        &mut out,
        "IMAGE",
        DEVICE_PREDICTION,
        o.timestamp_us,
        id(1),
        &meta,
        &lab,
    )?;
    let s = string_content(o.event)?;
    encode_message(
        &mut out,
        "STRING",
        DEVICE_MEASUREMENT,
        o.timestamp_us,
        id(2),
        &meta,
        &s,
    )?;
    Ok(out)
}

/// Counters of the server, for metrics and status.
#[derive(Debug, Default)]
pub struct IgtlCounters {
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Clients accepted since start.
    pub accepted: AtomicU64,
    /// Frames written to a client (each frame counted once per client).
    pub frames_sent: AtomicU64,
    /// Frames clients that have left did not read in time (see [`Server::frames_dropped`]).
    pub frames_dropped: AtomicU64,
    /// Clients refused because `max_clients` were connected.
    pub refused: AtomicU64,
}

struct Client {
    peer: SocketAddr,
    slot: Arc<Slot<Arc<[u8]>>>,
    alive: Arc<AtomicBool>,
    stream: TcpStream,
}

/// A reading of the server's figures (for metrics, the `Igtl` property and status).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct IgtlStats {
    pub clients: u64,
    /// Frames written to a client, once per client.
    pub frames_sent: u64,
    /// Frames a client did not read before a newer one, over all clients since start.
    pub frames_dropped: u64,
}

/// The running server: an accept thread and two threads per client (writer, reader).
pub struct Server {
    clients: Arc<Mutex<Vec<Client>>>,
    counters: Arc<IgtlCounters>,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds `listen` and starts accepting (at most `max_clients` at once). Stops with `stop`.
    pub fn start(
        listen: SocketAddr,
        max_clients: usize,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let clients: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(IgtlCounters::default());
        let (c, n, s) = (clients.clone(), counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pocusd-igtl".into())
            .spawn(move || accept_loop(listener, max_clients, c, n, s))?;
        Ok(Self {
            clients,
            counters,
            local,
            stop,
        })
    }

    /// The address bound (the port when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<IgtlCounters> {
        &self.counters
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.counters.clients.load(Ordering::Relaxed)
    }

    /// Frames a client did not read in time (replaced by a newer one), over all clients since
    /// start.
    pub fn frames_dropped(&self) -> u64 {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let live: u64 = clients.iter().map(|c| c.slot.dropped()).sum();
        // A client reaped between the two reads is counted in one of them only.
        live + self.counters.frames_dropped.load(Ordering::Relaxed)
    }

    /// The server's figures now.
    pub fn stats(&self) -> IgtlStats {
        IgtlStats {
            clients: self.clients() as u64,
            frames_sent: self.counters.frames_sent.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped(),
        }
    }

    /// Hands one encoded frame to every client (never waits on a client).
    pub fn broadcast(&self, frame: Arc<[u8]>) {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients.iter() {
            if c.alive.load(Ordering::Relaxed) {
                c.slot.put(frame.clone());
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients.iter() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    max_clients: usize,
    clients: Arc<Mutex<Vec<Client>>>,
    counters: Arc<IgtlCounters>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        reap(&clients, &counters);
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                eprintln!("pocusd: OpenIGTLink: accepting a client failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if counters.clients.load(Ordering::Relaxed) >= max_clients {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "pocusd: OpenIGTLink: client {peer} refused: {max_clients} clients are connected (igtl.max_clients)"
            );
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        if let Err(e) = add_client(stream, peer, &clients, &counters, &stop) {
            eprintln!("pocusd: OpenIGTLink: client {peer} could not be served: {e}");
        }
    }
    let clients = clients.lock().unwrap_or_else(|p| p.into_inner());
    for c in clients.iter() {
        let _ = c.stream.shutdown(Shutdown::Both);
    }
}

/// Forgets clients whose connection ended, adding their drops to the total.
fn reap(clients: &Mutex<Vec<Client>>, counters: &IgtlCounters) {
    let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
    clients.retain(|c| {
        let alive = c.alive.load(Ordering::Relaxed);
        if !alive {
            counters.clients.fetch_sub(1, Ordering::Relaxed);
            counters
                .frames_dropped
                .fetch_add(c.slot.dropped(), Ordering::Relaxed);
            eprintln!(
                "pocusd: OpenIGTLink: client {} disconnected ({} frames dropped for it)",
                c.peer,
                c.slot.dropped()
            );
        }
        alive
    });
}

fn add_client(
    stream: TcpStream,
    peer: SocketAddr,
    clients: &Mutex<Vec<Client>>,
    counters: &Arc<IgtlCounters>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let slot: Arc<Slot<Arc<[u8]>>> = Arc::new(Slot::new());
    let alive = Arc::new(AtomicBool::new(true));
    let mut reader = stream.try_clone()?;
    let mut writer = stream.try_clone()?;
    {
        let (slot, alive, counters, stop) =
            (slot.clone(), alive.clone(), counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pocusd-igtl-tx".into())
            .spawn(move || {
                while alive.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    let Some(bytes) = slot.take_timeout(super::TICK) else {
                        continue;
                    };
                    if writer.write_all(&bytes).is_err() {
                        break;
                    }
                    counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                alive.store(false, Ordering::Relaxed);
                let _ = writer.shutdown(Shutdown::Both);
            })?;
    }
    {
        let alive = alive.clone();
        std::thread::Builder::new()
            .name("pocusd-igtl-rx".into())
            .spawn(move || {
                // Whatever a client sends (GET_ requests, STATUS) is read and discarded; the end
                // of the stream or an error ends the client.
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                alive.store(false, Ordering::Relaxed);
                let _ = reader.shutdown(Shutdown::Both);
            })?;
    }
    counters.clients.fetch_add(1, Ordering::Relaxed);
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    eprintln!("pocusd: OpenIGTLink: client {peer} connected");
    clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Client {
            peer,
            slot,
            alive,
            stream,
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        // The catalogue check value of CRC-64/ECMA-182.
        assert_eq!(crc64(b"123456789"), 0x6C40_DF5F_0B49_7347);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn timestamp_fraction() {
        assert_eq!(timestamp(1_500_000), (1, 1 << 31));
        let (s, f) = timestamp(1_700_000_000_250_000);
        assert_eq!(s, 1_700_000_000);
        assert_eq!(f, 1 << 30);
    }

    #[test]
    fn message_layout() {
        let content = string_content("{\"seq\":7}").unwrap();
        let mut out = Vec::new();
        encode_message(
            &mut out,
            "STRING",
            "Measurement",
            2_000_000,
            9,
            &[("seq", "7")],
            &content,
        )
        .unwrap();
        assert_eq!(&out[0..2], &2u16.to_be_bytes());
        assert_eq!(&out[2..8], b"STRING");
        assert_eq!(out[8], 0);
        assert_eq!(&out[14..25], b"Measurement");
        assert_eq!(&out[34..38], &2u32.to_be_bytes());
        let body_len = u64::from_be_bytes(out[42..50].try_into().unwrap()) as usize;
        assert_eq!(out.len(), HEADER_LEN + body_len);
        let crc = u64::from_be_bytes(out[50..58].try_into().unwrap());
        assert_eq!(crc, crc64(&out[58..]));
        let body = &out[58..];
        assert_eq!(&body[0..2], &12u16.to_be_bytes());
        let meta_header = u16::from_be_bytes([body[2], body[3]]) as usize;
        let meta_body = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
        assert_eq!((meta_header, meta_body), (2 + 8, 4));
        assert_eq!(&body[8..12], &9u32.to_be_bytes());
        let content_end = body.len() - meta_header - meta_body;
        assert_eq!(&body[12..content_end], &content[..]);
        assert_eq!(&body[content_end + meta_header..], b"seq7");
    }

    fn read_exact_or_eof(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).ok()?;
        Some(b)
    }

    #[test]
    fn server_sends_to_each_client_refuses_one_too_many_and_forgets_leavers() {
        let stop = Arc::new(AtomicBool::new(false));
        let server = Server::start("127.0.0.1:0".parse().unwrap(), 2, stop.clone()).unwrap();
        let addr = server.local_addr();
        let mut a = TcpStream::connect(addr).unwrap();
        let b = TcpStream::connect(addr).unwrap();
        let wait = |what: &str, f: &dyn Fn() -> bool| {
            let t = std::time::Instant::now();
            while !f() {
                assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait("two clients", &|| server.clients() == 2);
        // A third is closed at once.
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        // Frames reach a reading client whole and in order; `b` never reads.
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for k in 0..3u8 {
            server.broadcast(Arc::from(vec![k; 1000]));
            assert_eq!(read_exact_or_eof(&mut a, 1000).unwrap(), vec![k; 1000]);
        }
        // Big frames to a client that never reads: its socket fills, its frames are dropped and
        // counted, the caller never blocks.
        let t = std::time::Instant::now();
        for _ in 0..200 {
            server.broadcast(Arc::from(vec![9u8; 1 << 20]));
        }
        assert!(t.elapsed() < Duration::from_secs(5), "broadcast blocked");
        wait("drops counted", &|| server.frames_dropped() > 0);
        drop(b);
        drop(a);
        wait("leavers forgotten", &|| server.clients() == 0);
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn image_geometry() {
        let px = vec![5u8; 4 * 3];
        let c = image_content(4, 3, (0.5, 0.25), &px).unwrap();
        assert_eq!(c.len(), IMAGE_HEADER_LEN + 12);
        assert_eq!(&c[6..12], &[0, 4, 0, 3, 0, 1]);
        let f = |i: usize| f32::from_be_bytes(c[12 + 4 * i..16 + 4 * i].try_into().unwrap());
        assert_eq!((f(0), f(4), f(8)), (0.5, 0.25, 0.5));
        assert_eq!((f(9), f(10)), (0.75, 0.25));
        assert!(image_content(4, 3, (1.0, 1.0), &px[..11]).is_err());
        assert!(string_content(&"x".repeat(70_000)).is_err());
    }
}
