//! Capture-card pixel formats to 8-bit gray: GREY and YUYV with `bytesperline` padding, and MJPEG,
//! including the Huffman-table-less MJPEG many UVC cards send (the standard tables of JPEG Annex K
//! are inserted before decoding). Pure functions over byte buffers, so they are tested on buffers
//! in the cards' real formats without a device. Depends on `frame` and `imageio`.

use thiserror::Error;

use crate::frame::{GrayImage, GrayView};

/// A pixel format a capture card offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit gray.
    Grey,
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// Motion JPEG.
    Mjpg,
}

impl PixelFormat {
    /// The FourCC.
    pub fn fourcc(&self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpg => *b"MJPG",
        }
    }

    /// From a FourCC.
    pub fn from_fourcc(f: &[u8; 4]) -> Option<Self> {
        match f {
            b"GREY" => Some(PixelFormat::Grey),
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"MJPG" => Some(PixelFormat::Mjpg),
            _ => None,
        }
    }

    /// Preference when negotiating: GREY, then YUYV, then MJPG.
    pub fn preference(&self) -> u8 {
        match self {
            PixelFormat::Grey => 0,
            PixelFormat::Yuyv => 1,
            PixelFormat::Mjpg => 2,
        }
    }
}

/// Why a buffer could not become a frame.
#[derive(Debug, Error, PartialEq)]
pub enum ConvertError {
    #[error("buffer of {len} bytes is too short for {height} lines of {bytes_per_line} bytes")]
    Short {
        len: usize,
        height: usize,
        bytes_per_line: usize,
    },
    #[error("bytesperline {bytes_per_line} is less than the {needed} bytes a line of width {width} needs")]
    BadStride {
        bytes_per_line: usize,
        needed: usize,
        width: usize,
    },
    #[error("the driver reports a {width}x{height} frame; nothing to capture")]
    Empty { width: usize, height: usize },
    #[error("MJPEG frame does not decode: {0}")]
    Jpeg(String),
    #[error("MJPEG frame is {got_w}x{got_h}, the negotiated size is {want_w}x{want_h}")]
    Size {
        got_w: usize,
        got_h: usize,
        want_w: usize,
        want_h: usize,
    },
}

fn check(
    len: usize,
    width: usize,
    height: usize,
    bpl: usize,
    bytes_per_px: usize,
) -> Result<(), ConvertError> {
    // A 0-wide or 0-high format (a confused driver) is refused, not divided by.
    if width == 0 || height == 0 {
        return Err(ConvertError::Empty { width, height });
    }
    let needed = width * bytes_per_px;
    if bpl < needed {
        return Err(ConvertError::BadStride {
            bytes_per_line: bpl,
            needed,
            width,
        });
    }
    if height == 0 || len < bpl * (height - 1) + needed {
        return Err(ConvertError::Short {
            len,
            height,
            bytes_per_line: bpl,
        });
    }
    Ok(())
}

/// GREY with `bytes_per_line` padding into `out` (resized).
pub fn grey(
    buf: &[u8],
    width: usize,
    height: usize,
    bytes_per_line: usize,
    out: &mut GrayImage,
) -> Result<(), ConvertError> {
    check(buf.len(), width, height, bytes_per_line, 1)?;
    let view =
        GrayView::new(width, height, bytes_per_line, buf).map_err(|_| ConvertError::Short {
            len: buf.len(),
            height,
            bytes_per_line,
        })?;
    view.copy_into(out);
    Ok(())
}

/// YUYV (Y0 U Y1 V) with `bytes_per_line` padding: the Y samples into `out` (resized).
pub fn yuyv_to_y(
    buf: &[u8],
    width: usize,
    height: usize,
    bytes_per_line: usize,
    out: &mut GrayImage,
) -> Result<(), ConvertError> {
    check(buf.len(), width, height, bytes_per_line, 2)?;
    out.resize(width, height);
    for (y, row) in out.as_mut_slice().chunks_exact_mut(width).enumerate() {
        let line = &buf[y * bytes_per_line..y * bytes_per_line + 2 * width];
        for (o, pair) in row.iter_mut().zip(line.chunks_exact(2)) {
            *o = pair[0];
        }
    }
    Ok(())
}

/// True when the JPEG has no DHT segment before its first scan.
pub fn lacks_huffman_tables(jpeg: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            return true; // malformed; let the decoder report it
        }
        let marker = jpeg[i + 1];
        match marker {
            0xC4 => return false,
            0xDA => return true,
            0xD8 | 0x01 | 0xD0..=0xD7 => i += 2,
            0xFF => i += 1,
            _ => {
                let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
                i += 2 + len;
            }
        }
    }
    true
}

/// The four standard Huffman tables (JPEG Annex K.3) as one DHT segment.
fn standard_dht() -> Vec<u8> {
    const DC_LUM_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHR_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUM_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_LUM_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_CHR_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHR_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUM_BITS, &DC_VALS),
        (0x10, &AC_LUM_BITS, &AC_LUM_VALS),
        (0x01, &DC_CHR_BITS, &DC_VALS),
        (0x11, &AC_CHR_BITS, &AC_CHR_VALS),
    ];
    let body: usize = tables.iter().map(|(_, _, v)| 1 + 16 + v.len()).sum();
    let mut seg = vec![0xFF, 0xC4];
    seg.extend(((body + 2) as u16).to_be_bytes());
    for (class_id, bits, vals) in tables {
        seg.push(class_id);
        seg.extend_from_slice(bits);
        seg.extend_from_slice(vals);
    }
    seg
}

/// The JPEG with the standard Huffman tables inserted after SOI when it has none.
pub fn with_huffman_tables(jpeg: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if jpeg.len() < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8 || !lacks_huffman_tables(jpeg) {
        return std::borrow::Cow::Borrowed(jpeg);
    }
    let mut out = Vec::with_capacity(jpeg.len() + 440);
    out.extend_from_slice(&jpeg[..2]);
    out.extend(standard_dht());
    out.extend_from_slice(&jpeg[2..]);
    std::borrow::Cow::Owned(out)
}

/// Decodes one MJPEG frame (with or without Huffman tables) to gray into `out`; `expect` is the
/// negotiated size, checked when given.
pub fn mjpeg(
    buf: &[u8],
    expect: Option<(usize, usize)>,
    out: &mut GrayImage,
) -> Result<(), ConvertError> {
    let jpeg = with_huffman_tables(buf);
    let img =
        crate::imageio::decode_gray(&jpeg).map_err(|e| ConvertError::Jpeg(format!("{e:?}")))?;
    if let Some((w, h)) = expect {
        if (img.width(), img.height()) != (w, h) {
            return Err(ConvertError::Size {
                got_w: img.width(),
                got_h: img.height(),
                want_w: w,
                want_h: h,
            });
        }
    }
    *out = img;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_tables_are_well_formed() {
        let dht = standard_dht();
        let len = u16::from_be_bytes([dht[2], dht[3]]) as usize;
        assert_eq!(len + 2, dht.len());
        // Each table's symbol count equals the sum of its code-length counts.
        let mut i = 4;
        while i < dht.len() {
            let n: usize = dht[i + 1..i + 17].iter().map(|&b| b as usize).sum();
            i += 17 + n;
        }
        assert_eq!(i, dht.len());
    }

    #[test]
    fn padded_lines_are_honoured() {
        // 3x2 GREY with 5 bytes per line.
        let buf = [1, 2, 3, 99, 99, 4, 5, 6];
        let mut out = GrayImage::default();
        grey(&buf, 3, 2, 5, &mut out).unwrap();
        assert_eq!(out.as_slice(), &[1, 2, 3, 4, 5, 6]);
        // 2x2 YUYV with 6 bytes per line.
        let buf = [10, 128, 11, 128, 0, 0, 12, 128, 13, 128];
        yuyv_to_y(&buf, 2, 2, 6, &mut out).unwrap();
        assert_eq!(out.as_slice(), &[10, 11, 12, 13]);
        assert!(matches!(
            grey(&buf, 3, 2, 2, &mut out),
            Err(ConvertError::BadStride { .. })
        ));
        assert!(matches!(
            grey(&buf[..4], 3, 2, 3, &mut out),
            Err(ConvertError::Short { .. })
        ));
    }
}
