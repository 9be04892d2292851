//! Model manifests: `models/<name>.toml` describes one ONNX model — where its file
//! is, how to preprocess for it, what its output means and where its labels are.
//! Every check that needs no ONNX Runtime happens here, and every error names the
//! file and the field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::vision::{ColorOrder, Layout, Normalization, Preprocessing, ResizeMode};

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores: graft applies softmax.
    Logits,
    /// Already a probability distribution (the model ends in Softmax).
    Probabilities,
}

/// A validated manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    #[serde(skip)]
    pub manifest_path: PathBuf,
    pub file: PathBuf,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub input_name: String,
    pub preprocessing: Preprocessing,
    pub output_name: String,
    pub output_kind: OutputKind,
    pub labels_file: PathBuf,
    pub features: Option<String>,
    /// The feature map before pooling, for localization heads that need position.
    pub spatial_features: Option<SpatialFeatures>,
    /// `[tune] cut_points`: tensors where tuning may cut the graph, nearest the input first
    /// (empty: graft finds them).
    pub cut_points: Vec<String>,
    /// `[quantization]`: an INT8 model's provenance and measured cost (`graft models quantize`).
    pub quantization: Option<Quantization>,
    /// `preload = true`: loaded at start and never unloaded to make room under
    /// `--max-model-memory`, whatever `--preload` names.
    pub preload: bool,
}

/// How an INT8 (QDQ) model was made from its FP32 source, and what it measured.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// The FP32 model it was made from.
    pub source: String,
    /// The calibration method: `minmax`, `percentile` or `entropy`.
    pub method: String,
    /// The activations' type: `u8` or `i8` (weights are int8, per channel).
    pub activations: String,
    pub calibration_images: usize,
    /// Held-out images its top-1 class was compared on.
    pub agreement_images: usize,
    /// The share of them whose top-1 class equals the FP32 model's.
    pub top1_agreement: f64,
    /// Of them, those the FP32 model classifies with a top-1 probability of at least 0.5.
    #[serde(default)]
    pub confident_images: usize,
    /// The agreement on those (near-ties excluded).
    #[serde(default)]
    pub confident_agreement: f64,
    /// INT8 ÷ FP32 images a second in ONNX Runtime, at batch 1 and 8, when it was made.
    pub speedup_batch1: f64,
    pub speedup_batch8: f64,
    /// Weighted operators left in FP32 (the first layers, the classifier when asked, and the
    /// most sensitive ones when asked).
    #[serde(default)]
    pub kept_fp32: Vec<String>,
}

/// A manifest's `output.spatial_features`: a rank-4 tensor before global pooling (any block:
/// its grid and channels are read from the running model) and its layout (`NCHW` unless
/// `spatial_layout` says otherwise).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpatialFeatures {
    pub tensor: String,
    pub layout: Layout,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {message}")]
    Unreadable { file: PathBuf, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field { file: PathBuf, field: &'static str, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    description: String,
    file: PathBuf,
    url: Option<String>,
    sha256: Option<String>,
    input: RawInput,
    output: RawOutput,
    tune: Option<RawTune>,
    quantization: Option<Quantization>,
    #[serde(default)]
    preload: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTune {
    #[serde(default)]
    cut_points: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    layout: Layout,
    height: u32,
    width: u32,
    color: Option<ColorOrder>,
    resize: RawResize,
    crop_fraction: Option<f64>,
    normalize: RawNormalize,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    scale: Option<f32>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawResize {
    Pad,
    Crop,
    Stretch,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawNormalize {
    Caffe,
    Tf,
    Torch,
    Custom,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    kind: OutputKind,
    labels: PathBuf,
    features: Option<String>,
    spatial_features: Option<String>,
    spatial_layout: Option<Layout>,
}

impl Manifest {
    /// Reads and validates `path`; the model name is the file stem.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let unreadable = |message: String| ManifestError::Unreadable { file: path.to_owned(), message };
        let text = fs_err::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        let raw: RawManifest =
            toml::from_str(&text).map_err(|e| unreadable(e.message().to_owned() + &span_hint(&text, e.span())))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| is_valid_model_name(s))
            .ok_or_else(|| {
                unreadable("the file name must be <name>.toml with a name of letters, digits, '-', '_' or '.'".into())
            })?
            .to_owned();
        Self::validate(name, path, raw)
    }

    fn validate(name: String, path: &Path, raw: RawManifest) -> Result<Self, ManifestError> {
        let field = |field: &'static str, message: &str| ManifestError::Field {
            file: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let input = raw.input;

        if let Some(sha) = &raw.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(field("sha256", "must be 64 hexadecimal digits"));
        }
        if let Some(url) = &raw.url
            && !["http://", "https://", "file://"].iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(field("url", "must start with http://, https:// or file://"));
        }
        if input.height == 0 || input.width == 0 {
            return Err(field("input.height", "height and width must be positive"));
        }
        if input.height > 4096 || input.width > 4096 {
            return Err(field("input.height", "height and width must be at most 4096"));
        }
        let resize = match (input.resize, input.crop_fraction) {
            (RawResize::Crop, fraction) => {
                let fraction = fraction.unwrap_or(0.875);
                if !(fraction > 0.0 && fraction <= 1.0) {
                    return Err(field("input.crop_fraction", "must be in (0, 1]"));
                }
                ResizeMode::Crop { fraction }
            }
            (_, Some(_)) => {
                return Err(field("input.crop_fraction", "only applies to resize = \"crop\""));
            }
            (RawResize::Pad, None) => ResizeMode::Pad,
            (RawResize::Stretch, None) => ResizeMode::Stretch,
        };
        let custom_given = input.mean.is_some() || input.std.is_some() || input.scale.is_some();
        let (normalization, natural_color) = match input.normalize {
            RawNormalize::Custom => {
                let (Some(mean), Some(std)) = (input.mean, input.std) else {
                    return Err(field(
                        "input.mean",
                        "normalize = \"custom\" needs `mean` and `std` (and optionally `scale`)",
                    ));
                };
                if std.iter().any(|s| !s.is_finite() || *s == 0.0) {
                    return Err(field("input.std", "every value must be finite and non-zero"));
                }
                let scale = input.scale.unwrap_or(1.0);
                if !scale.is_finite() || scale == 0.0 || mean.iter().any(|m| !m.is_finite()) {
                    return Err(field("input.scale", "scale and mean must be finite, scale non-zero"));
                }
                (Normalization { scale, mean, std }, ColorOrder::Rgb)
            }
            _ if custom_given => {
                return Err(field("input.mean", "mean, std and scale are only read with normalize = \"custom\""));
            }
            RawNormalize::Caffe => (Normalization::CAFFE, ColorOrder::Bgr),
            RawNormalize::Tf => (Normalization::TF, ColorOrder::Rgb),
            RawNormalize::Torch => (Normalization::TORCH, ColorOrder::Rgb),
        };
        let color = input.color.unwrap_or(natural_color);
        if input.normalize == RawNormalize::Caffe && color != ColorOrder::Bgr {
            return Err(field(
                "input.color",
                "caffe normalisation is defined on BGR input; remove `color` or set it to \"bgr\"",
            ));
        }
        if input.name.is_empty() {
            return Err(field("input.name", "must name the model's input tensor"));
        }
        if raw.output.name.is_empty() {
            return Err(field("output.name", "must name the model's output tensor"));
        }
        let spatial_features = match (raw.output.spatial_features, raw.output.spatial_layout) {
            (Some(_), _) if raw.output.features.is_none() => {
                return Err(field(
                    "output.spatial_features",
                    "needs `features` too: a localizer classifies from the pooled features beside the map",
                ));
            }
            (Some(tensor), layout) if !tensor.is_empty() => {
                Some(SpatialFeatures { tensor, layout: layout.unwrap_or(Layout::Nchw) })
            }
            (Some(_), _) => return Err(field("output.spatial_features", "must name a tensor")),
            (None, Some(_)) => return Err(field("output.spatial_layout", "only applies with `spatial_features`")),
            (None, None) => None,
        };
        let cut_points = raw.tune.map(|t| t.cut_points).unwrap_or_default();
        if cut_points.iter().any(String::is_empty) {
            return Err(field("tune.cut_points", "every cut point must name a tensor"));
        }
        let labels_file = dir.join(&raw.output.labels);
        if !labels_file.is_file() {
            return Err(field("output.labels", &format!("{} does not exist", labels_file.display())));
        }

        Ok(Self {
            name,
            description: raw.description,
            manifest_path: path.to_owned(),
            file: dir.join(&raw.file),
            url: raw.url,
            sha256: raw.sha256.map(|s| s.to_ascii_lowercase()),
            input_name: input.name,
            preprocessing: Preprocessing {
                width: input.width,
                height: input.height,
                layout: input.layout,
                color,
                resize,
                normalization,
            },
            output_name: raw.output.name,
            output_kind: raw.output.kind,
            labels_file,
            features: raw.output.features,
            spatial_features,
            cut_points,
            quantization: raw.quantization,
            preload: raw.preload,
        })
    }
}

/// Model names appear in URLs and file names: keep them to a safe alphabet.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => format!(" (line {})", text[..span.start.min(text.len())].lines().count().max(1)),
        None => String::new(),
    }
}

/// Every `*.toml` in `dir`, sorted by name. The first invalid manifest is an error.
pub fn load_manifest_dir(dir: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let entries = fs_err::read_dir(dir)
        .map_err(|e| ManifestError::Unreadable { file: dir.to_owned(), message: e.to_string() })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Manifest::load(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        std::fs::write(dir.join("labels.tsv"), "index\tid\tname\n0\ta\tcat\n").unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    const GOOD: &str = r#"
file = "m.onnx"
[input]
name = "x"
layout = "NHWC"
height = 224
width = 224
resize = "pad"
normalize = "caffe"
[output]
name = "y"
kind = "probabilities"
labels = "labels.tsv"
"#;

    #[test]
    fn caffe_defaults_to_bgr() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest::load(&write(dir.path(), "resnet.toml", GOOD)).unwrap();
        assert_eq!(manifest.name, "resnet");
        assert_eq!(manifest.preprocessing.color, ColorOrder::Bgr);
        assert_eq!(manifest.file, dir.path().join("m.onnx"));
    }

    #[test]
    fn inconsistent_fields_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (GOOD.replace("normalize = \"caffe\"", "normalize = \"caffe\"\ncolor = \"rgb\""), "input.color"),
            (GOOD.replace("normalize = \"caffe\"", "normalize = \"custom\"\nmean = [1.0, 2.0, 3.0]"), "input.mean"),
            (GOOD.replace("normalize = \"caffe\"", "normalize = \"tf\"\nstd = [1.0, 1.0, 1.0]"), "input.mean"),
            (GOOD.replace("resize = \"pad\"", "resize = \"pad\"\ncrop_fraction = 0.9"), "input.crop_fraction"),
            (GOOD.replace("labels.tsv", "missing.tsv"), "output.labels"),
            (GOOD.replace("file = \"m.onnx\"", "file = \"m.onnx\"\nsha256 = \"abc\""), "sha256"),
        ];
        for (body, field) in cases {
            let err = Manifest::load(&write(dir.path(), "bad.toml", &body)).unwrap_err().to_string();
            assert!(err.contains("bad.toml") && err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(&write(dir.path(), "x.toml", &GOOD.replace("layout = \"NHWC\"", "layout = \"HWC\"")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("HWC"), "{err}");
        let err = Manifest::load(&write(dir.path(), "y.toml", &format!("colour = 1\n{GOOD}"))).unwrap_err().to_string();
        assert!(err.contains("y.toml") && err.contains("colour"), "{err}");
    }
}
