//! `pocusd clahe`, `pocusd synth` and `pocusd unet`: single images, phantom datasets and random
//! U-Nets for benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use pocusd::config::{self, Config};
use pocusd::files::write_atomic;
use pocusd::frame::GrayImage;
use pocusd::imageio;
use pocusd::infer::{self, onnx_build};
use pocusd::model::Task;
use pocusd::preprocess::{Clahe, ClaheParams};
use pocusd::synth::{self, PhantomConfig};

#[derive(Args, Debug)]
pub struct ClaheArgs {
    /// Input image (PNG or JPEG; colour is converted to gray).
    input: PathBuf,
    /// Output image (PNG unless the extension says JPEG).
    output: PathBuf,
    #[command(flatten)]
    params: ClaheFlags,
}

#[derive(Args, Debug)]
pub struct ClaheFlags {
    /// Contrast limit (OpenCV clipLimit); <= 0 disables clipping. Default: [preprocess] clahe_clip_limit.
    #[arg(long, value_name = "F", value_parser = parse_clip_limit, allow_negative_numbers = true)]
    clip_limit: Option<f64>,
    /// Tile grid: N for NxN, or CxR (C columns by R rows). Default: [preprocess] clahe_tiles.
    #[arg(long, value_name = "N|CxR", value_parser = parse_tiles_arg)]
    tiles: Option<(usize, usize)>,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder (created); gets images/, masks/ and truth.csv.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of image/mask pairs.
    #[arg(long, value_name = "N")]
    count: u32,
    /// What the phantom shows.
    #[arg(long, value_enum, default_value = "aponeurosis")]
    task: Task,
    /// Seed; the same seed gives the same dataset.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Frame width in pixels.
    #[arg(long, default_value_t = 640, value_parser = clap::value_parser!(u32).range(16..=8192))]
    width: u32,
    /// Frame height in pixels.
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(16..=8192))]
    height: u32,
    /// Draw the scanner's screen furniture around the image.
    #[arg(long)]
    furniture: bool,
    /// With --furniture: which scanner's screen (generic, ge, telemed, philips).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "generic",
        requires = "furniture"
    )]
    layout: String,
    /// With --furniture: the whole screen mirrored left to right.
    #[arg(long, requires = "furniture")]
    mirrored: bool,
    /// The depth the image shows in mm (the scale of the furniture's ruler).
    #[arg(long, default_value_t = 40.0)]
    depth_mm: f64,
    /// Another scanner's look: grey levels times this gain, clipped at white (0.25 to 4).
    #[arg(long, default_value_t = 1.0)]
    style_gain: f64,
    /// Another scanner's look: a gaussian blur of this standard deviation in pixels, coarser
    /// speckle and resolution (0 to 8; the mask is not blurred).
    #[arg(long, default_value_t = 0.0)]
    style_blur: f64,
    /// Print one JSON object instead of a summary line.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct UnetArgs {
    /// Output ONNX file.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// Input size WxH.
    #[arg(long, default_value = "128x128", value_parser = parse_size_arg)]
    input: (usize, usize),
    /// Channels at the first level (doubled per level).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    width: u32,
    /// Levels (poolings).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=6))]
    depth: u32,
    /// Upsampling: ConvTranspose 2x2 (transpose) or nearest Resize + 3x3 conv (resize).
    #[arg(long, default_value = "transpose", value_parser = ["transpose", "resize"])]
    upsample: String,
    /// Input channels (1, or 3 with the gray frame replicated).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3))]
    channels: u32,
    /// Task written into the metadata.
    #[arg(long, value_enum, default_value = "aponeurosis")]
    task: Task,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_clip_limit(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!(
            "'{s}' is not a finite number (use 0 or a negative value to disable clipping)"
        ));
    }
    Ok(v)
}

fn parse_size_arg(s: &str) -> Result<(usize, usize), String> {
    let (w, h) =
        pocusd::model::parse_size(s).ok_or_else(|| format!("'{s}' is not WxH (e.g. 128x128)"))?;
    if w % 16 != 0 || h % 16 != 0 || w > 2048 || h > 2048 {
        return Err(format!(
            "'{s}': width and height must be multiples of 16 up to 2048"
        ));
    }
    Ok((w, h))
}

fn parse_tiles_arg(s: &str) -> Result<(usize, usize), String> {
    let (c, r) = pocusd::preprocess::clahe::parse_tiles(s)
        .ok_or_else(|| format!("'{s}' is not N or CxR (e.g. 8 or 8x6)"))?;
    ClaheParams::new(0.0, c, r).map_err(|e| e.to_string())?;
    Ok((c, r))
}

/// CLAHE parameters from flags, falling back to the configuration.
pub fn clahe_params(cfg: &Config, flags: &ClaheFlags) -> anyhow::Result<ClaheParams> {
    let base = cfg.preprocess.clahe.unwrap_or_default();
    let clip = flags.clip_limit.unwrap_or(base.clip_limit);
    let (tx, ty) = flags.tiles.unwrap_or((base.tiles_x, base.tiles_y));
    Ok(ClaheParams::new(clip, tx, ty)?)
}

pub fn cmd_clahe(cfg: &config::Config, args: &ClaheArgs) -> anyhow::Result<()> {
    let params = clahe_params(cfg, &args.params)?;
    let src = imageio::read_gray(&args.input)?;
    let mut dst = GrayImage::default();
    Clahe::new(params).apply(src.view()?, &mut dst);
    imageio::write_gray(&args.output, &dst)?;
    Ok(())
}

pub fn cmd_synth(args: &SynthArgs) -> anyhow::Result<()> {
    let images = args.out.join("images");
    let masks = args.out.join("masks");
    for dir in [&images, &masks] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !(5.0..=400.0).contains(&args.depth_mm) {
        anyhow::bail!("--depth-mm {}: allowed 5 to 400", args.depth_mm);
    }
    if !(0.25..=4.0).contains(&args.style_gain) {
        anyhow::bail!("--style-gain {}: allowed 0.25 to 4", args.style_gain);
    }
    if !(0.0..=8.0).contains(&args.style_blur) {
        anyhow::bail!("--style-blur {}: allowed 0 to 8", args.style_blur);
    }
    let layout = pocusd::synth::Layout::parse(&args.layout).ok_or_else(|| {
        anyhow::anyhow!(
            "--layout {}: allowed {}",
            args.layout,
            pocusd::synth::Layout::allowed()
        )
    })?;
    let cfg = PhantomConfig {
        depth_mm: args.depth_mm,
        width: args.width as usize,
        height: args.height as usize,
        task: args.task,
        furniture: args.furniture,
        seed: args.seed,
        layout,
        mirrored: args.mirrored,
    };
    let mut csv = String::from(
        "filename,task,seed,width,height,thickness_px,band_angle_deg,circumference_px,area_px,\
         image_x,image_y,image_w,image_h,pennation_angle_deg,fascicle_length_px,mm_per_px\n",
    );
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
    let mm_per_px = synth::Phantom::new(cfg).mm_per_px();
    for i in 0..args.count {
        let mut s = synth::sample(cfg, i as u64);
        synth::restyle(&mut s.image, args.style_gain, args.style_blur);
        let name = format!("synth_{i:05}.png");
        imageio::write_gray(&images.join(&name), &s.image)?;
        imageio::write_gray(&masks.join(&name), &s.mask)?;
        let r = s.geometry.image;
        csv.push_str(&format!(
            "{name},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{mm_per_px:.6}\n",
            args.task.as_str(),
            args.seed,
            cfg.width,
            cfg.height,
            fmt(s.truth.thickness_px),
            fmt(s.truth.band_angle_deg),
            fmt(s.truth.circumference_px),
            fmt(s.truth.area_px),
            r.x,
            r.y,
            r.w,
            r.h,
            fmt(s.truth.pennation_angle_deg),
            fmt(s.truth.fascicle_length_px),
        ));
    }
    write_atomic(&args.out.join("truth.csv"), csv.as_bytes())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out, "count": args.count, "task": args.task.as_str(), "seed": args.seed})
        );
    } else {
        println!(
            "wrote {} {} pairs to {}",
            args.count,
            args.task.as_str(),
            args.out.display()
        );
    }
    Ok(())
}

pub fn cmd_unet(args: &UnetArgs) -> anyhow::Result<()> {
    let (w, h) = args.input;
    if w >> args.depth << args.depth != w || h >> args.depth << args.depth != h {
        anyhow::bail!(
            "input {w}x{h} is not divisible by 2^{} (depth {})",
            args.depth,
            args.depth
        );
    }
    let spec = onnx_build::fixture_spec(
        args.task,
        w,
        h,
        args.channels as usize,
        pocusd::model::Layout::Nchw,
        pocusd::model::OutputKind::Sigmoid,
    );
    let spec = pocusd::model::ModelSpec {
        clahe: Some(ClaheParams::default()),
        trained_on: Some("random weights (pocusd unet)".into()),
        ..spec
    };
    let shape = onnx_build::UnetShape {
        depth: args.depth as usize,
        base_width: args.width as usize,
        conv_transpose: args.upsample == "transpose",
    };
    let bytes = onnx_build::random_unet(&spec, shape, args.seed);
    write_atomic(&args.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, sha256 {})",
        args.out.display(),
        bytes.len(),
        infer::sha256_hex(&bytes)
    );
    Ok(())
}
