//! Tensor data in and out of the v2 protocol: JSON `data` (nested arrays flattened), the
//! binary tensor extension (the JSON header of `Inference-Header-Content-Length` bytes, then
//! each binary tensor in the order of the JSON), and `BYTES` elements (a 4-byte
//! little-endian length, then the bytes).

use base64::Engine;
use serde_json::Value;

/// The body split by the binary extension: its JSON, and the binary tensor data after it.
pub fn split_body<'a>(body: &'a [u8], header_length: Option<&str>) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some(length) = header_length else { return Ok((body, &[])) };
    let length: usize =
        length.trim().parse().map_err(|_| format!("Inference-Header-Content-Length is not a length: {length:?}"))?;
    if length > body.len() {
        return Err(format!("Inference-Header-Content-Length is {length} but the body has only {} bytes", body.len()));
    }
    Ok(body.split_at(length))
}

/// Takes the next `size` bytes of the binary tensor data.
pub fn take<'a>(binary: &mut &'a [u8], size: usize, name: &str) -> Result<&'a [u8], String> {
    if size > binary.len() {
        return Err(format!(
            "input {name}: binary_data_size is {size} but only {} bytes of binary data are left",
            binary.len()
        ));
    }
    let (taken, rest) = binary.split_at(size);
    *binary = rest;
    Ok(taken)
}

/// FP32 elements from little-endian bytes.
pub fn fp32_from_bytes(bytes: &[u8], name: &str) -> Result<Vec<f32>, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!("input {name}: {} bytes of FP32 data is not a whole number of elements", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// FP32 elements from JSON `data`, flat or nested, in row-major order; at most `max`.
pub fn fp32_from_json(data: &Value, name: &str, max: usize) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    let mut stack = vec![data];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Number(n) => {
                if out.len() == max {
                    return Err(format!("input {name}: data has more than the {max} elements its shape holds"));
                }
                out.push(n.as_f64().ok_or_else(|| format!("input {name}: {n} is not a number"))? as f32);
            }
            other => return Err(format!("input {name}: FP32 data holds {other}, not a number")),
        }
    }
    Ok(out)
}

/// `BYTES` elements from the binary extension: each a 4-byte little-endian length, then
/// that many bytes; at most `max` elements.
pub fn bytes_elements<'a>(mut data: &'a [u8], name: &str, max: usize) -> Result<Vec<&'a [u8]>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if out.len() == max {
            return Err(format!("input {name}: more than the {max} elements its shape holds"));
        }
        let length = take(&mut data, 4, name)?;
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        out.push(take(&mut data, length, name)?);
    }
    Ok(out)
}

/// `BYTES` elements from JSON `data`: base64 strings (raw image bytes are not text).
pub fn bytes_from_json(data: &Value, name: &str, max: usize) -> Result<Vec<Vec<u8>>, String> {
    let items: Vec<&Value> = match data {
        Value::Array(items) => {
            items.iter().flat_map(|v| v.as_array().map_or(vec![v], |a| a.iter().collect())).collect()
        }
        other => vec![other],
    };
    if items.len() > max {
        return Err(format!("input {name}: {} elements; its shape holds {max}", items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item.as_str().ok_or_else(|| format!("input {name}: element {i} is not a string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("input {name}: element {i} is not base64 (encoded images travel as base64 in JSON, or raw with the binary extension): {e}"))
        })
        .collect()
}

/// `BYTES` elements as the binary extension sends them.
pub fn encode_bytes_elements(elements: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element.as_bytes());
    }
    out
}

/// FP32 elements as little-endian bytes.
pub fn fp32_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_binary_extension_splits_and_counts_exactly() {
        let body = b"{\"a\":1}\x01\x02\x03";
        assert_eq!(split_body(body, Some("7")).unwrap(), (&body[..7], &body[7..]));
        assert_eq!(split_body(body, None).unwrap(), (&body[..], &[][..]));
        assert!(split_body(body, Some("11")).unwrap_err().contains("only 10 bytes"));
        assert!(split_body(body, Some("x")).is_err());
        let mut rest = &body[7..];
        assert_eq!(take(&mut rest, 2, "in").unwrap(), [1, 2]);
        assert!(take(&mut rest, 2, "in").is_err());
    }

    #[test]
    fn fp32_round_trips_and_json_is_flattened_in_row_major_order() {
        let values = [1.5f32, -2.0, 0.1];
        assert_eq!(fp32_from_bytes(&fp32_to_bytes(&values), "x").unwrap(), values);
        assert!(fp32_from_bytes(&[0, 0, 0], "x").is_err());
        assert_eq!(fp32_from_json(&json!([[1, 2], [3, 4.5]]), "x", 4).unwrap(), [1.0, 2.0, 3.0, 4.5]);
        assert!(fp32_from_json(&json!([1, 2, 3]), "x", 2).unwrap_err().contains("more than"));
        assert!(fp32_from_json(&json!(["1"]), "x", 2).is_err());
    }

    #[test]
    fn bytes_elements_are_length_prefixed() {
        let elements = vec!["0.5:3:cat".to_owned(), String::new(), "é".to_owned()];
        let encoded = encode_bytes_elements(&elements);
        assert_eq!(&encoded[..4], &9u32.to_le_bytes());
        let decoded = bytes_elements(&encoded, "x", 3).unwrap();
        assert_eq!(decoded, elements.iter().map(|e| e.as_bytes()).collect::<Vec<_>>());
        assert!(bytes_elements(&encoded, "x", 2).is_err(), "more elements than the shape");
        assert!(bytes_elements(&encoded[..6], "x", 3).is_err(), "a length past the end");
        let b64 = json!(["AQI=", ["AwQ="]]);
        assert_eq!(bytes_from_json(&b64, "x", 2).unwrap(), [vec![1, 2], vec![3, 4]]);
        assert!(bytes_from_json(&json!(["not base64!"]), "x", 1).is_err());
    }
}
