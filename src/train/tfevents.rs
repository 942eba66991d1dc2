//! TensorBoard event files, written by hand: a TFRecord stream (length, masked CRC-32C of the
//! length, the serialised `Event` protobuf, masked CRC-32C of the data) of a version event followed
//! by one scalar summary per value. Only what scalars need; no maintained crate does this with
//! current prost. Must not depend on burn or the training loop.

use prost::Message;

/// `tensorflow.Event`, the fields used here.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with `simple_value`.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// One scalar point.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub wall_time: f64,
    pub value: f32,
}

/// The whole event file for `scalars` (rewritten each epoch, so the file is always complete and
/// agrees with `metrics.csv` after a resume).
pub fn encode(start_time: f64, scalars: &[Scalar]) -> Vec<u8> {
    let mut out = Vec::new();
    let version = Event {
        wall_time: start_time,
        step: 0,
        file_version: Some("brain.Event:2".into()),
        summary: None,
    };
    record(&mut out, &version.encode_to_vec());
    for s in scalars {
        let e = Event {
            wall_time: s.wall_time,
            step: s.step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: s.tag.clone(),
                    simple_value: Some(s.value),
                }],
            }),
        };
        record(&mut out, &e.encode_to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
