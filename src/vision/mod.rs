//! The vision room: request bytes → pixels → model tensor. Knows nothing of HTTP,
//! SQL or ONNX Runtime; the manifest's preprocessing facts arrive as plain values.

mod augment;
mod boxes;
mod decode;
mod jpeg;
mod preprocess;
mod resample;
mod thumbnail;
mod turbo;

pub use augment::{AugmentGeometry, Augmentation};
pub use boxes::{InputBox, PixelBox, box_from_input, box_to_input};
pub use decode::{DEFAULT_MAX_JPEG_SCANS, DecodeLimits, VisionError, decode_image};
pub use decode::{DecodedImage, decode_for, decode_image_for, decode_image_scaled, jpeg_scales, min_decode_size};
pub use preprocess::{
    ColorOrder, Geometry, Layout, Normalization, Preprocessing, ResizeMode, ResizePlan, preprocess_into, tensor_len,
};
pub use resample::SourceWindow;
pub use thumbnail::{THUMBNAIL_SIZES, thumbnail_jpeg};

/// One encoded image as the model's input tensor: decoded (reduced as far as the spec
/// allows) and preprocessed, for callers that keep whole images rather than write into a
/// batch.
pub fn image_tensor(bytes: &[u8], limits: &DecodeLimits, spec: &Preprocessing) -> Result<Vec<f32>, VisionError> {
    let decoded = decode_for(bytes, limits, spec)?;
    let mut out = vec![0.0; tensor_len(spec)];
    preprocess_into(&decoded.image, spec, &mut out);
    Ok(out)
}
