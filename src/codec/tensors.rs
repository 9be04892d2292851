//! Named f32 tensors with string metadata, in the safetensors format (the format candle,
//! PyTorch and the Hugging Face tools read): the one file format of graft's weights and
//! phase 2's checkpoint. The reader checks every name, dtype and shape it is asked for, and
//! the format itself refuses a file its header does not exactly cover.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A tensor to write: its name, shape and values (row-major).
pub struct Named<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
}

/// The safetensors file of `tensors` with `metadata` in its `__metadata__`.
pub fn write(tensors: &[Named<'_>], metadata: &[(&str, String)]) -> Vec<u8> {
    let views = tensors.iter().map(|t| {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), super::to_bytes(t.values))
            .expect("a tensor's values fill its shape");
        (t.name.as_str(), view)
    });
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    safetensors::serialize(views, Some(metadata)).expect("names are distinct and the header is small")
}

/// A safetensors file being read.
pub struct Reader<'a> {
    file: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl<'a> Reader<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<Self, String> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        Ok(Self { file, metadata })
    }

    /// The metadata value `key`, which must be present.
    pub fn meta(&self, key: &str) -> Result<&str, String> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| format!("no {key:?} in the metadata"))
    }

    /// The f32 tensor `name`, which must have `shape`.
    pub fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let view = self.file.tensor(name).map_err(|_| format!("no tensor {name:?}"))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(format!("tensor {name:?} is {:?} {:?}, expected F32 {shape:?}", view.dtype(), view.shape()));
        }
        super::from_bytes(view.data()).ok_or_else(|| format!("tensor {name:?} holds partial values"))
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, String> {
        Ok(self.file.tensor(name).map_err(|_| format!("no tensor {name:?}"))?.shape().to_vec())
    }

    /// How many tensors the file holds.
    pub fn tensor_count(&self) -> usize {
        self.file.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_other_readers_read() {
        let weights = [1.0f32, -2.0, 0.5, 4.0, 8.0, -0.25];
        let bytes =
            write(&[Named { name: "w".into(), shape: vec![2, 3], values: &weights }], &[("format", "test".into())]);
        // The layout by hand: a u64 header length, a JSON header, then the data.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["format"], "test");
        assert_eq!(header["w"]["dtype"], "F32");
        assert_eq!(header["w"]["shape"], serde_json::json!([2, 3]));
        let data: Vec<f32> =
            bytes[8 + n..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(data, weights);

        let reader = Reader::open(&bytes).unwrap();
        assert_eq!(reader.meta("format").unwrap(), "test");
        assert_eq!(reader.f32s("w", &[2, 3]).unwrap(), weights);
        assert!(reader.f32s("w", &[3, 2]).unwrap_err().contains("expected F32 [3, 2]"));
        assert!(reader.f32s("b", &[2]).is_err() && reader.meta("version").is_err());
        for cut in [0, 7, 8 + n, bytes.len() - 1] {
            assert!(Reader::open(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Reader::open(&[bytes.as_slice(), &[0]].concat()).is_err());
    }
}
