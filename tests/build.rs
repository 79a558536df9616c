//! Bakes libtorch's library directory into the test binaries' run path (see worker/build.rs).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // The wheel's own libraries (and the CUDA ones beside it) resolve from there.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
