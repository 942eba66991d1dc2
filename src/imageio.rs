//! Reading and writing 8-bit grayscale images (PNG, JPEG) at the program's edges.
//!
//! Colour images are converted to luma as the `image` crate does (Rec. 709 weights); 16-bit images
//! are scaled to 8 bits. Errors name the file and say what is wrong with it. Depends only on
//! `frame` and `files` (every write is whole or absent).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::frame::GrayImage;

/// Errors reading or writing an image file.
#[derive(Debug, Error)]
pub enum ImageIoError {
    /// The file does not exist or cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but is not a readable PNG/JPEG image.
    #[error("{path} is not a readable image (PNG or JPEG expected): {reason}")]
    Decode { path: PathBuf, reason: String },
    /// The image has no pixels.
    #[error("{path} is an empty image ({width}x{height})")]
    Empty {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// Writing failed.
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads an image file as 8-bit grayscale.
pub fn read_gray(path: &Path) -> Result<GrayImage, ImageIoError> {
    let bytes = std::fs::read(path).map_err(|source| ImageIoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    decode_gray(&bytes).map_err(|e| match e {
        DecodeError::Decode(reason) => ImageIoError::Decode {
            path: path.to_path_buf(),
            reason,
        },
        DecodeError::Empty(width, height) => ImageIoError::Empty {
            path: path.to_path_buf(),
            width,
            height,
        },
    })
}

/// Why in-memory bytes could not become a gray image.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// Not a decodable PNG/JPEG.
    #[error("not a decodable PNG or JPEG: {0}")]
    Decode(String),
    /// Decoded to zero pixels.
    #[error("the image is {0}x{1} pixels (empty)")]
    Empty(u32, u32),
}

/// Decodes PNG or JPEG bytes to 8-bit grayscale.
pub fn decode_gray(bytes: &[u8]) -> Result<GrayImage, DecodeError> {
    let img = image::load_from_memory(bytes).map_err(|e| DecodeError::Decode(e.to_string()))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(DecodeError::Empty(w, h));
    }
    let luma = img.into_luma8();
    GrayImage::from_vec(w as usize, h as usize, luma.into_raw())
        .map_err(|e| DecodeError::Decode(e.to_string()))
}

/// Writes a gray image as PNG (the format is chosen by the extension; PNG when it has none).
pub fn write_gray(path: &Path, img: &GrayImage) -> Result<(), ImageIoError> {
    let err = |reason: String| ImageIoError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let buf = image::GrayImage::from_raw(
        img.width() as u32,
        img.height() as u32,
        img.as_slice().to_vec(),
    )
    .ok_or_else(|| err("pixel buffer does not match the image size".into()))?;
    save(path, &image::DynamicImage::ImageLuma8(buf))
}

/// Writes an RGB image (3 bytes per pixel, packed) as PNG or JPEG by extension.
pub fn write_rgb(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), ImageIoError> {
    let err = |reason: String| ImageIoError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let buf = image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec())
        .ok_or_else(|| err("pixel buffer does not match the image size".into()))?;
    save(path, &image::DynamicImage::ImageRgb8(buf))
}

/// Encodes by the extension (PNG when it has none) and writes the file whole or not at all.
fn save(path: &Path, img: &image::DynamicImage) -> Result<(), ImageIoError> {
    let err = |reason: String| ImageIoError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let format = image::ImageFormat::from_path(path).unwrap_or(image::ImageFormat::Png);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .map_err(|e| err(e.to_string()))?;
    crate::files::write_atomic(path, bytes.get_ref()).map_err(|e| err(e.source.to_string()))
}
