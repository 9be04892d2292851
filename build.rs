//! Build steps:
//! - the ONNX protobuf types (prost) from proto/onnx.proto for graph surgery, and the Open
//!   Inference Protocol's gRPC service (tonic) from proto/grpc_service.proto; protoc comes
//!   from the protoc-bin-vendored crate, nothing to install;
//! - csrc/turbo_decode.c against the system libjpeg-turbo (`libjpeg-dev` on Debian), when
//!   its headers are present: JPEG decoding then uses its SIMD decoder and M/8 DCT scaling
//!   (`cfg(graft_libjpeg_turbo)`); without them the pure-Rust decoders do all the work.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    // sqlx::migrate! embeds the migrations at compile time.
    println!("cargo:rerun-if-changed=migrations");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc.clone());
    // Initializers of a 100 MB model are mostly raw_data: keep them as Bytes slices, not copies.
    config.bytes(["."]);
    config.compile_protos(&["proto/onnx.proto"], &["proto"]).expect("proto/onnx.proto compiles");

    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Tensor contents are passed on, not copied: raw_input_contents as Bytes slices of the message.
    config.bytes(["."]);
    tonic_prost_build::configure()
        // A client for graft's own tests and benchmark; the transport is graft's hyper loop.
        .build_transport(false)
        .compile_with_config(config, &["proto/grpc_service.proto"], &["proto"])
        .expect("proto/grpc_service.proto compiles");

    build_turbo_decoder();
}

fn build_turbo_decoder() {
    println!("cargo::rustc-check-cfg=cfg(graft_libjpeg_turbo)");
    println!("cargo:rerun-if-changed=csrc/turbo_decode.c");
    println!("cargo:rerun-if-env-changed=GRAFT_NO_LIBJPEG");
    if std::env::var_os("GRAFT_NO_LIBJPEG").is_some() {
        println!("cargo:warning=GRAFT_NO_LIBJPEG is set: JPEGs are decoded by the pure-Rust decoders");
        return;
    }
    // pkg-config, where libjpeg has a .pc file, says where the headers and the library are.
    let library = pkg_config::Config::new().cargo_metadata(false).probe("libjpeg").ok();
    let (include_paths, link_paths) = library.map(|l| (l.include_paths, l.link_paths)).unwrap_or_default();
    let compiled = cc::Build::new()
        .file("csrc/turbo_decode.c")
        .includes(&include_paths)
        .opt_level(2)
        .warnings(true)
        .try_compile("graft_turbo_decode");
    if let Err(error) = compiled {
        println!(
            "cargo:warning=libjpeg-turbo headers not found ({error}); install libjpeg-dev for faster JPEG decoding"
        );
        return;
    }
    for path in &link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    // Linked statically when the archive is there, so the binary runs where libjpeg is not.
    let has_archive = link_paths.iter().any(|path| path.join("libjpeg.a").is_file());
    println!("cargo:rustc-link-lib={}jpeg", if has_archive { "static=" } else { "" });
    println!("cargo:rustc-cfg=graft_libjpeg_turbo");
}
