//! The train room: the native trainer for heads on frozen features (ndarray). Knows
//! nothing of HTTP, SQL or ONNX Runtime: features and labels in, weights and metrics out.
