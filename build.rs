//! Generates the ONNX protobuf types (prost) from proto/onnx.proto for graph surgery.
//! protoc comes from the protoc-bin-vendored crate: nothing to install.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Initializers of a 100 MB model are mostly raw_data: keep them as Bytes slices, not copies.
    config.bytes(["."]);
    config.compile_protos(&["proto/onnx.proto"], &["proto"]).expect("proto/onnx.proto compiles");
}
