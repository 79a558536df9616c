//! Generates the tonic/prost code for `proto/peftrain/v1/peftrain.proto` and the prost
//! messages of TensorBoard's event files (`proto/tensorflow/event.proto`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages (CI starts from a bare machine).
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/peftrain/v1/peftrain.proto");
    println!("cargo:rerun-if-changed=proto/tensorflow/event.proto");
    tonic_prost_build::configure()
        .bytes(".peftrain.v1.GradChunk.data")
        .bytes(".peftrain.v1.StateChunk.data")
        .compile_protos(&["proto/peftrain/v1/peftrain.proto", "proto/tensorflow/event.proto"], &["proto"])?;
    Ok(())
}
