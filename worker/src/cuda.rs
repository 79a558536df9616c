//! Loads libtorch's CUDA library at run time. The linker's --as-needed drops
//! `libtorch_cuda.so` from the binary (nothing references its symbols directly), and without it
//! `tch::Cuda::is_available()` is false; dlopen-ing it registers the CUDA backend.

use std::ffi::CString;

/// dlopens `libtorch_cuda.so` from the directory libtorch_cpu.so was loaded from (or the
/// loader's search path). Returns whether it is loaded.
pub fn load_torch_cuda() -> bool {
    let mut candidates = Vec::new();
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        if let Some(line) = maps.lines().find(|l| l.ends_with("/libtorch_cpu.so")) {
            if let Some(path) = line.split_whitespace().last() {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    candidates.push(dir.join("libtorch_cuda.so").display().to_string());
                }
            }
        }
    }
    candidates.push("libtorch_cuda.so".to_string());
    for c in candidates {
        let Ok(name) = CString::new(c) else { continue };
        // SAFETY: dlopen with a valid NUL-terminated path; the handle is intentionally kept
        // open for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return true;
        }
    }
    false
}
