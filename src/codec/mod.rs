//! Little-endian number buffers: the one codec for every float and integer graft stores or
//! reads raw — the feature cache, ONNX initializers, and (through [`tensors`], safetensors
//! files) weights and checkpoints. Values are cast, not copied one by one (`bytemuck`), which
//! is exact on the little-endian targets graft builds for (a big-endian build stops here, at
//! compile time).

pub mod tensors;

#[cfg(not(target_endian = "little"))]
compile_error!("graft stores numbers little-endian and reads them by casting: build for a little-endian target");

/// The bytes of `values`, little-endian.
pub fn to_bytes<T: bytemuck::NoUninit>(values: &[T]) -> &[u8] {
    bytemuck::cast_slice(values)
}

/// `bytes` read as little-endian values; `None` unless they are whole values. The bytes need
/// no alignment.
pub fn from_bytes<T: bytemuck::AnyBitPattern + bytemuck::NoUninit>(bytes: &[u8]) -> Option<Vec<T>> {
    bytes.len().is_multiple_of(size_of::<T>()).then(|| bytemuck::pod_collect_to_vec(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly_and_matches_the_little_endian_layout() {
        let values = [1.5f32, -0.0, f32::MIN_POSITIVE, f32::MAX, 3.25e-7];
        let expected: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_bytes(&values), expected.as_slice());
        let back: Vec<f32> = from_bytes(&expected).unwrap();
        assert_eq!(back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), values.map(f32::to_bits));
        let ints = [-3i64, 1 << 40];
        assert_eq!(from_bytes::<i64>(to_bytes(&ints)).unwrap(), ints);
    }

    #[test]
    fn unaligned_input_reads_and_partial_values_are_refused() {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&2.5f32.to_le_bytes());
        assert_eq!(from_bytes::<f32>(&bytes[1..]), Some(vec![2.5]));
        assert_eq!(from_bytes::<f32>(&bytes), None);
        assert_eq!(from_bytes::<f32>(&[]), Some(vec![]));
    }
}
