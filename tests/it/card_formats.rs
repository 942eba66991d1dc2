//! Capture-card pixel formats, on buffers the `ffmpeg` command produces in the cards' real formats:
//! GREY and YUYV with padded lines (`bytesperline` > the line), MJPEG with and without Huffman
//! tables (UVC cards often omit them). No V4L2 device exists on this machine; the device code
//! only hands these buffers over.

use std::path::Path;
use std::process::Command;

use pocusd::frame::GrayImage;
use pocusd::source::convert::{self, ConvertError};

fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Inserts `pad` junk bytes after every `line` bytes.
fn pad_lines(raw: &[u8], line: usize, pad: usize) -> Vec<u8> {
    raw.chunks_exact(line)
        .flat_map(|l| l.iter().copied().chain(std::iter::repeat_n(0xAB, pad)))
        .collect()
}

fn frame_png(dir: &Path) -> (std::path::PathBuf, GrayImage) {
    let img = pocusd::synth::sample(
        pocusd::synth::PhantomConfig {
            width: 320,
            height: 240,
            furniture: true,
            ..Default::default()
        },
        4,
    )
    .image;
    let p = dir.join("f.png");
    pocusd::imageio::write_gray(&p, &img).unwrap();
    (p, img)
}

#[test]
fn grey_with_padded_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (png, img) = frame_png(tmp.path());
    let raw = tmp.path().join("f.gray");
    ffmpeg(&[
        "-i",
        png.to_str().unwrap(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
        raw.to_str().unwrap(),
    ]);
    let buf = pad_lines(&std::fs::read(&raw).unwrap(), 320, 64);
    let mut out = GrayImage::default();
    convert::grey(&buf, 320, 240, 384, &mut out).unwrap();
    assert_eq!(out, img);
}

#[test]
fn yuyv_with_padded_lines_gives_the_luma_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let (png, img) = frame_png(tmp.path());
    let packed = tmp.path().join("f.yuyv");
    ffmpeg(&[
        "-i",
        png.to_str().unwrap(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuyv422",
        packed.to_str().unwrap(),
    ]);
    let raw = std::fs::read(&packed).unwrap();
    assert_eq!(raw.len(), 320 * 240 * 2);
    let buf = pad_lines(&raw, 640, 32);
    let mut out = GrayImage::default();
    convert::yuyv_to_y(&buf, 320, 240, 672, &mut out).unwrap();
    // Exactly the luma bytes of the unpadded buffer...
    let luma: Vec<u8> = raw.iter().step_by(2).copied().collect();
    assert!(
        out.as_slice() == luma.as_slice(),
        "padding leaked into the picture"
    );
    // ...which are FFmpeg's limited-range Y of the gray source: 16 + 219 v / 255.
    let worst = out
        .as_slice()
        .iter()
        .zip(img.as_slice())
        .map(|(&y, &v)| (y as f64 - (16.0 + 219.0 * v as f64 / 255.0)).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1.0,
        "Y differs from the expected luma by up to {worst}"
    );
    // A stride the driver could not have produced is refused, not misread.
    assert!(matches!(
        convert::yuyv_to_y(&buf, 320, 240, 600, &mut out),
        Err(ConvertError::BadStride { .. })
    ));
    assert!(matches!(
        convert::yuyv_to_y(&buf[..1000], 320, 240, 672, &mut out),
        Err(ConvertError::Short { .. })
    ));
}

/// Removes every DHT segment from a JPEG, as UVC cards send it.
fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        let marker = jpeg[i + 1];
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[i..]);
            return out;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker != 0xC4 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
    out
}

#[test]
fn mjpeg_with_and_without_huffman_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let (png, img) = frame_png(tmp.path());
    let jpg = tmp.path().join("f.mjpg");
    // Standard tables, as UVC hardware encoders use.
    ffmpeg(&[
        "-i",
        png.to_str().unwrap(),
        "-c:v",
        "mjpeg",
        "-huffman",
        "default",
        "-q:v",
        "2",
        "-pix_fmt",
        "yuvj422p",
        "-f",
        "mjpeg",
        jpg.to_str().unwrap(),
    ]);
    let with = std::fs::read(&jpg).unwrap();
    assert!(!convert::lacks_huffman_tables(&with));
    let without = strip_dht(&with);
    assert!(convert::lacks_huffman_tables(&without), "DHT stripped");
    assert!(without.len() < with.len());
    let (mut a, mut b) = (GrayImage::default(), GrayImage::default());
    convert::mjpeg(&with, Some((320, 240)), &mut a).unwrap();
    convert::mjpeg(&without, Some((320, 240)), &mut b).unwrap();
    assert_eq!(a, b, "tables inserted: the same picture");
    let mad: f64 = a
        .as_slice()
        .iter()
        .zip(img.as_slice())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / (320.0 * 240.0);
    assert!(
        mad < 4.0,
        "mean abs difference {mad:.2} against the source frame"
    );
    assert!(matches!(
        convert::mjpeg(&with, Some((640, 480)), &mut a),
        Err(ConvertError::Size { .. })
    ));
    assert!(matches!(
        convert::mjpeg(&with[..with.len() / 3], None, &mut a),
        Err(ConvertError::Jpeg(_)) | Ok(())
    ));
    assert!(matches!(
        convert::mjpeg(b"\xFF\xD8garbage", None, &mut a),
        Err(ConvertError::Jpeg(_))
    ));
}

/// Regression (found by the property test): a driver reporting a 0-wide or 0-high format made
/// the YUYV converter panic (chunks of size 0); it is a named error now.
#[test]
fn zero_sized_formats_are_refused_not_a_panic() {
    let mut out = GrayImage::default();
    for (w, h) in [(0usize, 4usize), (4, 0), (0, 0)] {
        for r in [
            convert::yuyv_to_y(&[0u8; 64], w, h, 16, &mut out),
            convert::grey(&[0u8; 64], w, h, 16, &mut out),
        ] {
            assert!(
                matches!(r, Err(ConvertError::Empty { .. })),
                "{w}x{h}: {r:?}"
            );
        }
    }
}
