//! The command line as a user meets it: bad input gives one readable line and a non-zero exit,
//! never a panic; configuration errors exit 78 and name the key.

use std::path::Path;

use crate::common::{self, run, stderr, stdout};

/// Asserts a clean failure: the given exit code, one line on stderr that mentions `needle`.
fn assert_clean_failure(o: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit status; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}: {err}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header says 0x0 pixels.
fn zero_size_png(path: &Path) {
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    chunk(b"IHDR", &[0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0]);
    chunk(b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

#[test]
fn clahe_bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let out = out.to_str().unwrap();

    let missing = tmp.path().join("missing.png");
    let o = run(&["clahe", missing.to_str().unwrap(), out]);
    assert_clean_failure(&o, 1, "missing.png");
    assert_eq!(
        stderr(&o).trim().lines().count(),
        1,
        "one line: {}",
        stderr(&o)
    );

    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    assert_clean_failure(
        &run(&["clahe", text.to_str().unwrap(), out]),
        1,
        "not a readable image",
    );

    let empty = tmp.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(
        &run(&["clahe", empty.to_str().unwrap(), out]),
        1,
        "empty.png",
    );

    let zero = tmp.path().join("zero.png");
    zero_size_png(&zero);
    assert_clean_failure(&run(&["clahe", zero.to_str().unwrap(), out]), 1, "zero.png");

    // A real image for the flag checks.
    let good = tmp.path().join("good.png");
    let img = pocusd::synth::sample(Default::default(), 0).image;
    pocusd::imageio::write_gray(&good, &img).unwrap();
    let good = good.to_str().unwrap();
    assert_clean_failure(&run(&["clahe", good, out, "--tiles", "0"]), 2, "tile grid");
    assert_clean_failure(
        &run(&["clahe", good, out, "--tiles", "0x4"]),
        2,
        "tile grid",
    );
    assert_clean_failure(&run(&["clahe", good, out, "--tiles", "8y8"]), 2, "8y8");
    assert_clean_failure(
        &run(&["clahe", good, out, "--clip-limit", "NaN"]),
        2,
        "finite",
    );
    assert_clean_failure(
        &run(&["clahe", good, out, "--clip-limit", "abc"]),
        2,
        "not a number",
    );
    assert!(!Path::new(out).exists(), "no output written on failure");

    let o = run(&["clahe", good, out, "--tiles", "8x6", "--clip-limit", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written = pocusd::imageio::read_gray(Path::new(out)).unwrap();
    assert_eq!((written.width(), written.height()), (640, 480));
}

#[test]
fn clahe_output_equals_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.png");
    let out = tmp.path().join("out.png");
    let img = pocusd::synth::sample(
        pocusd::synth::PhantomConfig {
            width: 301,
            height: 203,
            ..Default::default()
        },
        2,
    )
    .image;
    pocusd::imageio::write_gray(&input, &img).unwrap();
    let o = run(&[
        "clahe",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--tiles",
        "5x3",
        "--clip-limit",
        "2.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut expected = pocusd::frame::GrayImage::default();
    pocusd::preprocess::Clahe::new(pocusd::preprocess::ClaheParams::new(2.5, 5, 3).unwrap())
        .apply(img.view().unwrap(), &mut expected);
    assert_eq!(pocusd::imageio::read_gray(&out).unwrap(), expected);
}

#[test]
fn bench_clahe_prints_json_and_table() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.png");
    pocusd::imageio::write_gray(&input, &pocusd::synth::sample(Default::default(), 0).image)
        .unwrap();
    let o = run(&[
        "bench",
        "clahe",
        "--image",
        input.to_str().unwrap(),
        "--iters",
        "20",
        "--threads",
        "2",
        "--tiles",
        "8x6",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["width"], 640);
    assert_eq!(v["height"], 480);
    assert_eq!(v["iters"], 20);
    assert_eq!(v["threads"], 2);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    assert!(v["p99_ms"].as_f64().unwrap() >= v["median_ms"].as_f64().unwrap());
    let o = run(&[
        "bench",
        "clahe",
        "--image",
        input.to_str().unwrap(),
        "--iters",
        "5",
    ]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("median_ms") && stdout(&o).contains("640x480"),
        "{}",
        stdout(&o)
    );
    assert_clean_failure(
        &run(&["bench", "clahe", "--image", "/nonexistent.png"]),
        1,
        "/nonexistent.png",
    );
}

#[test]
fn config_errors_exit_78_and_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[preprocess]\nclahe_clip_limt = 3.0\n").unwrap();
    let o = run(&["--config", bad.to_str().unwrap(), "config", "check"]);
    assert_clean_failure(&o, 78, "preprocess.clahe_clip_limt");

    std::fs::write(&bad, "[preprocess]\nthreads = \"two\"\n").unwrap();
    assert_clean_failure(
        &run(&["config", "check", "--config", bad.to_str().unwrap()]),
        78,
        "preprocess.threads",
    );

    std::fs::write(&bad, "[preprocess]\nclahe_clip_limit = -3.0\n").unwrap();
    assert_clean_failure(
        &run(&["config", "check", "--config", bad.to_str().unwrap()]),
        78,
        "0.0 to 1000.0",
    );

    std::fs::write(&bad, "[preprocess\n").unwrap();
    assert_clean_failure(
        &run(&["config", "check", "--config", bad.to_str().unwrap()]),
        78,
        "not valid TOML",
    );

    let o = common::pocusd()
        .args(["config", "check"])
        .env("POCUSD__PREPROCESS__CLAHE_TILES", "0x3")
        .output()
        .unwrap();
    assert_clean_failure(&o, 78, "preprocess.clahe_tiles");

    let o = run(&["config", "check", "--config", "/nonexistent/pocusd.toml"]);
    assert_clean_failure(&o, 78, "/nonexistent/pocusd.toml");
}

#[test]
fn config_check_prints_the_effective_config() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("site.toml");
    std::fs::write(&file, "[preprocess]\nclahe_tiles = \"4x2\"\n").unwrap();
    let o = common::pocusd()
        .args(["config", "check", "--config", file.to_str().unwrap()])
        .env("POCUSD__PREPROCESS__CLAHE_CLIP_LIMIT", "3.5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let parsed: toml::Table = text.parse().expect("effective config is TOML");
    let pre = parsed["preprocess"].as_table().unwrap();
    assert_eq!(pre["clahe_tiles"].as_str(), Some("4x2"));
    assert_eq!(pre["clahe_clip_limit"].as_float(), Some(3.5));
    assert_eq!(pre["threads"].as_integer(), Some(1));
}

#[test]
fn version_names_the_commit() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let v = stdout(&o);
    assert!(
        v.starts_with(&format!("pocusd {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("(git "), "{v}");
}

#[test]
fn help_lists_the_working_commands() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for cmd in ["clahe", "synth", "bench", "config"] {
        assert!(h.contains(cmd), "--help mentions {cmd}: {h}");
    }
}
