//! The stored form of a head.
//!
//! Version 2, written now: a safetensors file with `layers.{i}.weight` (`inputs × outputs`,
//! row by row) and `layers.{i}.bias` for each layer, input side first, and the metadata
//! `format = "graft.head"`, `version = "2"`, `activations = "relu,softmax"` (or `"softmax"`).
//! Any safetensors reader (candle, PyTorch, numpy) loads it.
//!
//! Version 1, still read so stored heads keep working: the 8-byte magic `graftHD\0`, a
//! little-endian u32 header length, a UTF-8 JSON header
//! (`{"format":"graft.head","version":1,"dtype":"f32-le","layers":[{"inputs","outputs","activation"}…]}`),
//! then each layer's weights and biases as little-endian f32.
//!
//! Decoding trusts nothing: every size is checked against the bytes actually present before
//! anything is allocated from it.

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::{Dense, Head, HeadError};
use crate::codec;
use crate::codec::tensors::{self, Named, Reader};

/// Marks the start of a version 1 head blob.
const MAGIC: &[u8; 8] = b"graftHD\0";
/// The format version this build writes (it reads this and [`LEGACY_VERSION`]).
pub(crate) const VERSION: u32 = 2;
const LEGACY_VERSION: u32 = 1;
const FORMAT: &str = "graft.head";
const DTYPE: &str = "f32-le";
/// A real header is a few hundred bytes; refusing more bounds the JSON parse.
const MAX_HEADER_LEN: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    dtype: String,
    layers: Vec<LayerHeader>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerHeader {
    inputs: usize,
    outputs: usize,
    activation: String,
}

/// Only the version, read first so that a newer blob gets a version error, not a schema error.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

pub(crate) fn encode(head: &Head) -> Vec<u8> {
    let layers: Vec<&Dense> = head.layers().collect();
    let activations = if layers.len() == 2 { "relu,softmax" } else { "softmax" };
    let arrays: Vec<_> = layers.iter().map(|d| (d.weights.as_standard_layout(), d.bias.as_standard_layout())).collect();
    let mut named = Vec::new();
    for (i, (weights, bias)) in arrays.iter().enumerate() {
        let one_slice = "a standard-layout array is one slice";
        let shape = weights.shape().to_vec();
        named.push(Named { name: format!("layers.{i}.weight"), shape, values: weights.as_slice().expect(one_slice) });
        named.push(Named {
            name: format!("layers.{i}.bias"),
            shape: vec![bias.len()],
            values: bias.as_slice().expect(one_slice),
        });
    }
    let metadata =
        [("format", FORMAT.to_owned()), ("version", VERSION.to_string()), ("activations", activations.into())];
    tensors::write(&named, &metadata)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Head, HeadError> {
    match bytes.strip_prefix(MAGIC.as_slice()) {
        Some(rest) => decode_legacy(rest),
        None => decode_safetensors(bytes),
    }
}

fn decode_safetensors(bytes: &[u8]) -> Result<Head, HeadError> {
    let file = Reader::open(bytes).map_err(|e| malformed(&format!("not a graft head blob: {e}")))?;
    if file.meta("format") != Ok(FORMAT) {
        return Err(malformed("not a graft head blob (its metadata names another format)"));
    }
    let version = file.meta("version").ok().and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(VERSION) => {}
        Some(other) => return Err(HeadError::UnsupportedVersion(other)),
        None => return Err(malformed("no readable version in the metadata")),
    }
    let activations: Vec<&str> = file.meta("activations").map_err(|e| malformed(&e))?.split(',').collect();
    if activations.len() > 2 || file.tensor_count() != 2 * activations.len() {
        return Err(malformed(&format!("{} tensors for {} layers", file.tensor_count(), activations.len())));
    }
    let mut layers = Vec::with_capacity(activations.len());
    for (i, activation) in activations.iter().enumerate() {
        let shape = file.shape(&format!("layers.{i}.weight")).map_err(|e| malformed(&e))?;
        let [inputs, outputs] = shape[..] else { return Err(malformed("a weight tensor that is not a matrix")) };
        layers.push(LayerHeader { inputs, outputs, activation: (*activation).to_owned() });
    }
    check_layers(&layers)?;
    let mut dense = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let read = |name: String, shape: &[usize]| file.f32s(&name, shape).map_err(|e| malformed(&e));
        let weights = read(format!("layers.{i}.weight"), &[layer.inputs, layer.outputs])?;
        let bias = read(format!("layers.{i}.bias"), &[layer.outputs])?;
        let weights = Array2::from_shape_vec((layer.inputs, layer.outputs), weights)
            .map_err(|e| malformed(&format!("weights: {e}")))?;
        dense.push(Dense::new(weights, Array1::from(bias)).map_err(|e| malformed(&e.to_string()))?);
    }
    let output = dense.pop().ok_or_else(|| malformed("no layers"))?;
    Head::new(dense.pop(), output)
}

fn decode_legacy(rest: &[u8]) -> Result<Head, HeadError> {
    let (len, rest) = split(rest, 4).ok_or_else(|| malformed("truncated before the header length"))?;
    let header_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(malformed(&format!("header of {header_len} bytes is implausibly large")));
    }
    let (header, payload) = split(rest, header_len).ok_or_else(|| malformed("truncated inside the header"))?;
    let header = parse_header(header)?;
    let expected = payload_len(&header.layers)?;
    if payload.len() != expected {
        return Err(malformed(&format!("expected {expected} bytes of parameters, found {}", payload.len())));
    }
    read_layers(&header.layers, payload)
}

fn parse_header(header: &[u8]) -> Result<Header, HeadError> {
    let probe: VersionProbe =
        serde_json::from_slice(header).map_err(|e| malformed(&format!("unreadable header: {e}")))?;
    if probe.version != LEGACY_VERSION {
        return Err(HeadError::UnsupportedVersion(probe.version));
    }
    let header: Header = serde_json::from_slice(header).map_err(|e| malformed(&format!("unreadable header: {e}")))?;
    if header.format != FORMAT || header.dtype != DTYPE {
        return Err(malformed(&format!("unknown format {:?} / dtype {:?}", header.format, header.dtype)));
    }
    check_layers(&header.layers)?;
    Ok(header)
}

/// One or two layers, chained, a ReLU hidden layer and a softmax output.
fn check_layers(layers: &[LayerHeader]) -> Result<(), HeadError> {
    let expected_activations: &[&str] = match layers.len() {
        1 => &["softmax"],
        2 => &["relu", "softmax"],
        n => return Err(malformed(&format!("a head has one or two layers, not {n}"))),
    };
    for (layer, activation) in layers.iter().zip(expected_activations) {
        if layer.activation != *activation {
            return Err(malformed(&format!("expected a {activation} layer, found {:?}", layer.activation)));
        }
        if layer.inputs == 0 || layer.outputs == 0 {
            return Err(malformed("a layer with zero inputs or outputs"));
        }
    }
    if layers.windows(2).any(|pair| pair[0].outputs != pair[1].inputs) {
        return Err(malformed("layer shapes do not chain"));
    }
    Ok(())
}

/// Bytes the parameters take, with overflow treated as malformed rather than wrapped.
fn payload_len(layers: &[LayerHeader]) -> Result<usize, HeadError> {
    let too_big = || malformed("layer sizes overflow");
    layers.iter().try_fold(0usize, |total, layer| {
        let floats =
            layer.inputs.checked_mul(layer.outputs).and_then(|w| w.checked_add(layer.outputs)).ok_or_else(too_big)?;
        floats.checked_mul(4).and_then(|b| total.checked_add(b)).ok_or_else(too_big)
    })
}

/// Reads the layers; `payload` is known to hold exactly their parameters.
fn read_layers(layers: &[LayerHeader], mut payload: &[u8]) -> Result<Head, HeadError> {
    let mut dense = Vec::with_capacity(layers.len());
    for layer in layers {
        let (weights, rest) = take_floats(payload, layer.inputs * layer.outputs)?;
        let (bias, rest) = take_floats(rest, layer.outputs)?;
        payload = rest;
        let weights = Array2::from_shape_vec((layer.inputs, layer.outputs), weights)
            .map_err(|e| malformed(&format!("weights: {e}")))?;
        dense.push(Dense::new(weights, Array1::from(bias)).map_err(|e| malformed(&e.to_string()))?);
    }
    let output = dense.pop().ok_or_else(|| malformed("no layers"))?;
    Head::new(dense.pop(), output)
}

fn take_floats(bytes: &[u8], count: usize) -> Result<(Vec<f32>, &[u8]), HeadError> {
    let (head, rest) = split(bytes, count * 4).ok_or_else(|| malformed("truncated parameters"))?;
    let floats = codec::from_bytes(head).ok_or_else(|| malformed("truncated parameters"))?;
    Ok((floats, rest))
}

fn split(bytes: &[u8], at: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= at).then(|| bytes.split_at(at))
}

fn malformed(why: &str) -> HeadError {
    HeadError::Malformed(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn sample(hidden: Option<usize>) -> Head {
        Head::init(6, hidden, 3, &mut StdRng::seed_from_u64(3)).unwrap()
    }

    fn with_header(header: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn round_trip_is_exact() {
        for hidden in [None, Some(4)] {
            let head = sample(hidden);
            assert_eq!(Head::from_bytes(&head.to_bytes()).unwrap(), head);
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let head = Head::new(None, Dense::new(array![[1.0f32, -2.0]], array![0.5, 0.25]).unwrap()).unwrap();
        let bytes = head.to_bytes();
        // Read as any safetensors reader would: a u64 header length, a JSON header, the data.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["format"], "graft.head");
        assert_eq!(header["__metadata__"]["version"], "2");
        assert_eq!(header["__metadata__"]["activations"], "softmax");
        let tensor = |name: &str| -> (serde_json::Value, Vec<f32>) {
            let entry = &header[name];
            assert_eq!(entry["dtype"], "F32", "{name}");
            let [from, to] = [0, 1].map(|k| entry["data_offsets"][k].as_u64().unwrap() as usize + 8 + n);
            let values = bytes[from..to].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (entry["shape"].clone(), values)
        };
        assert_eq!(tensor("layers.0.weight"), (serde_json::json!([1, 2]), vec![1.0, -2.0]));
        assert_eq!(tensor("layers.0.bias"), (serde_json::json!([2]), vec![0.5, 0.25]));
    }

    #[test]
    fn a_version_1_blob_still_loads() {
        for hidden in [None, Some(4)] {
            let head = sample(hidden);
            let layers: Vec<&Dense> = head.layers().collect();
            let activations = if layers.len() == 2 { vec!["relu", "softmax"] } else { vec!["softmax"] };
            let described: Vec<String> = layers
                .iter()
                .zip(activations)
                .map(|(d, a)| format!(r#"{{"inputs":{},"outputs":{},"activation":"{a}"}}"#, d.inputs(), d.outputs()))
                .collect();
            let header =
                format!(r#"{{"format":"graft.head","version":1,"dtype":"f32-le","layers":[{}]}}"#, described.join(","));
            let payload: Vec<u8> = layers
                .iter()
                .flat_map(|d| d.weights.iter().chain(d.bias.iter()))
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert_eq!(Head::from_bytes(&with_header(&header, &payload)).unwrap(), head);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample(Some(4)).to_bytes();
        for len in 0..bytes.len() {
            assert!(Head::from_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Head::from_bytes(&longer).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Head::from_bytes(b"").is_err());
        assert!(Head::from_bytes(b"GIF89a not a head at all").is_err());
        let mut state = 12345u32;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect();
            assert!(Head::from_bytes(&junk).is_err());
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&junk);
            assert!(Head::from_bytes(&framed).is_err());
        }
    }

    #[test]
    fn damaged_headers_are_errors() {
        let two_floats = [0u8; 8];
        let ok = r#"{"format":"graft.head","version":1,"dtype":"f32-le","layers":[{"inputs":1,"outputs":1,"activation":"softmax"}]}"#;
        assert!(Head::from_bytes(&with_header(ok, &two_floats)).is_ok());
        let newer = ok.replace("\"version\":1", "\"version\":7");
        assert_eq!(Head::from_bytes(&with_header(&newer, &two_floats)), Err(HeadError::UnsupportedVersion(7)));
        let cases = [
            ok.replace("f32-le", "f16-le"),
            ok.replace("softmax", "relu"),
            ok.replace("\"inputs\":1", "\"inputs\":0"),
            ok.replace("\"inputs\":1", "\"inputs\":18446744073709551615"),
            ok.replace("\"outputs\":1", "\"outputs\":4611686018427387904"),
            ok.replace("graft.head", "other"),
            r#"{"format":"graft.head","version":1,"dtype":"f32-le","layers":[]}"#.to_string(),
            "{not json".to_string(),
        ];
        for header in cases {
            assert!(Head::from_bytes(&with_header(&header, &two_floats)).is_err(), "{header}");
        }
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Head::from_bytes(&huge).is_err());
        let nan = [f32::NAN.to_le_bytes(), 0f32.to_le_bytes()].concat();
        assert!(Head::from_bytes(&with_header(ok, &nan)).is_err());
    }
}
