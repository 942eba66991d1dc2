//! ONNX files as bytes: read a model's `metadata_props`, rewrite them while every other field of
//! the file (graph, initializers, opsets, producer) is copied byte for byte, and read the float
//! initializers of a model by name (for `pocusd train --init MODEL.onnx`). Works on the protobuf
//! wire format of `ModelProto` and tract's prost types; it is part of `infer`, the one home of
//! tract. No file I/O: callers hand in and write out bytes. Must not depend on burn or the daemon.

use std::collections::HashMap;

use prost::Message;
use thiserror::Error;
use tract_onnx::pb;

/// Why bytes could not be read or rewritten as an ONNX model.
#[derive(Debug, Error, PartialEq)]
pub enum OnnxFileError {
    /// Not a protobuf `ModelProto`.
    #[error("not an ONNX model ({0})")]
    NotOnnx(String),
    /// A metadata key that cannot be written.
    #[error("metadata key {0:?} is empty or holds control characters")]
    BadKey(String),
}

/// `ModelProto.metadata_props` (field 14).
const METADATA_FIELD: u64 = 14;

/// The metadata of an ONNX model, in file order.
pub fn metadata(bytes: &[u8]) -> Result<Vec<(String, String)>, OnnxFileError> {
    let model = decode(bytes)?;
    Ok(model
        .metadata_props
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}

/// The model with its metadata changed: `set` adds or replaces keys, `unset` removes them; the
/// entries keep their order (new keys last). Every other top-level field is copied as it was, so
/// the graph and its initializers are the same bytes.
pub fn rewrite_metadata(
    bytes: &[u8],
    set: &[(String, String)],
    unset: &[String],
) -> Result<Vec<u8>, OnnxFileError> {
    for (k, _) in set {
        if k.is_empty() || k.chars().any(char::is_control) {
            return Err(OnnxFileError::BadKey(k.clone()));
        }
    }
    // The whole file must decode first: never rewrite something that is not a model.
    decode(bytes)?;
    let mut kept = Vec::with_capacity(bytes.len() + 256);
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let tag = varint(bytes, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        let body_start = pos;
        match wire {
            0 => {
                varint(bytes, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?)
                    .map_err(|_| OnnxFileError::NotOnnx("field length overflows".into()))?;
                pos = pos
                    .checked_add(len)
                    .ok_or_else(|| OnnxFileError::NotOnnx("field length overflows".into()))?;
            }
            w => {
                return Err(OnnxFileError::NotOnnx(format!(
                    "wire type {w} at byte {start}"
                )))
            }
        }
        if pos > bytes.len() {
            return Err(OnnxFileError::NotOnnx(format!(
                "field {field} at byte {start} runs past the end"
            )));
        }
        if field == METADATA_FIELD && wire == 2 {
            let mut p = body_start;
            let len = varint(bytes, &mut p)? as usize;
            let e = pb::StringStringEntryProto::decode(&bytes[p..p + len])
                .map_err(|e| OnnxFileError::NotOnnx(e.to_string()))?;
            entries.push((e.key, e.value));
        } else {
            kept.extend_from_slice(&bytes[start..pos]);
        }
    }
    entries.retain(|(k, _)| !unset.contains(k));
    for (k, v) in set {
        match entries.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => entries.push((k.clone(), v.clone())),
        }
    }
    for (key, value) in entries {
        let entry = pb::StringStringEntryProto { key, value };
        let body = entry.encode_to_vec();
        put_varint(&mut kept, METADATA_FIELD << 3 | 2);
        put_varint(&mut kept, body.len() as u64);
        kept.extend_from_slice(&body);
    }
    Ok(kept)
}

/// A model's float initializers by name, with the producer that wrote the file.
#[derive(Debug, Clone, Default)]
pub struct Initializers {
    /// `ModelProto.producer_name` (`pocusd` for our own files).
    pub producer: String,
    /// name -> (dims, values).
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The float initializers of an ONNX model (raw little-endian data or `float_data`).
pub fn initializers(bytes: &[u8]) -> Result<Initializers, OnnxFileError> {
    let model = decode(bytes)?;
    let graph = model
        .graph
        .ok_or_else(|| OnnxFileError::NotOnnx("no graph".into()))?;
    let mut tensors = HashMap::new();
    for t in graph.initializer {
        let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let data = if !t.float_data.is_empty() {
            t.float_data
        } else {
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        tensors.insert(t.name, (dims, data));
    }
    Ok(Initializers {
        producer: model.producer_name,
        tensors,
    })
}

/// The serialized graph (`ModelProto.graph`) of a model: equal bytes mean equal graph and weights.
pub fn graph_bytes(bytes: &[u8]) -> Result<Vec<u8>, OnnxFileError> {
    let model = decode(bytes)?;
    Ok(model.graph.map(|g| g.encode_to_vec()).unwrap_or_default())
}

fn decode(bytes: &[u8]) -> Result<pb::ModelProto, OnnxFileError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxFileError::NotOnnx(e.to_string()))?;
    if model.graph.is_none() {
        return Err(OnnxFileError::NotOnnx("the file holds no graph".into()));
    }
    Ok(model)
}

fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64, OnnxFileError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| OnnxFileError::NotOnnx("truncated varint".into()))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(OnnxFileError::NotOnnx("varint longer than 10 bytes".into()))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::onnx_build::{fixture_spec, random_unet, UnetShape};
    use crate::model::{Layout, OutputKind, Task};

    fn model() -> Vec<u8> {
        let spec = fixture_spec(
            Task::Aponeurosis,
            32,
            32,
            1,
            Layout::Nchw,
            OutputKind::Sigmoid,
        );
        random_unet(
            &spec,
            UnetShape {
                depth: 2,
                base_width: 4,
                conv_transpose: true,
            },
            7,
        )
    }

    #[test]
    fn rewrites_metadata_and_keeps_the_graph_bytes() {
        let before = model();
        let after = rewrite_metadata(
            &before,
            &[
                ("pocusd.roi".into(), "auto".into()),
                ("pocusd.task".into(), "aponeurosis".into()),
            ],
            &["pocusd.trained_on".into()],
        )
        .unwrap();
        assert_ne!(before, after);
        assert_eq!(graph_bytes(&before).unwrap(), graph_bytes(&after).unwrap());
        let m = metadata(&after).unwrap();
        assert!(m.contains(&("pocusd.roi".into(), "auto".into())));
        assert!(!m.iter().any(|(k, _)| k == "pocusd.trained_on"));
        // Replaced keys stay where they were; the count of task keys is one.
        assert_eq!(m.iter().filter(|(k, _)| k == "pocusd.task").count(), 1);
        let (a, b) = (
            initializers(&before).unwrap(),
            initializers(&after).unwrap(),
        );
        assert_eq!(a.tensors, b.tensors);
        // Rewriting again with nothing to change is the identity.
        assert_eq!(rewrite_metadata(&after, &[], &[]).unwrap(), after);
    }

    #[test]
    fn refuses_what_is_not_a_model() {
        assert!(matches!(
            rewrite_metadata(b"hello, not onnx", &[], &[]),
            Err(OnnxFileError::NotOnnx(_))
        ));
        let m = model();
        assert!(rewrite_metadata(&m[..m.len() / 2], &[], &[]).is_err());
        assert_eq!(
            rewrite_metadata(&m, &[("".into(), "x".into())], &[]),
            Err(OnnxFileError::BadKey("".into()))
        );
    }
}
