//! The CUDA C sources of `kernels/`, embedded in the binary and compiled with NVRTC at
//! run time (once per process and device, see `cuda::device`).

use crate::error::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};

/// The shared header, pasted in place of `#include "common.cuh"` (NVRTC is given no
/// include path, so the kernels need no CUDA toolkit headers).
const COMMON: &str = include_str!("../../../../kernels/common.cuh");

/// Every kernel file: (name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("adam", include_str!("../../../../kernels/adam.cu")),
    (
        "attention",
        include_str!("../../../../kernels/attention.cu"),
    ),
    ("cast", include_str!("../../../../kernels/cast.cu")),
    ("copy", include_str!("../../../../kernels/copy.cu")),
    (
        "elementwise",
        include_str!("../../../../kernels/elementwise.cu"),
    ),
    ("ema", include_str!("../../../../kernels/ema.cu")),
    (
        "flash_attention",
        include_str!("../../../../kernels/flash_attention.cu"),
    ),
    ("index", include_str!("../../../../kernels/index.cu")),
    ("norm", include_str!("../../../../kernels/norm.cu")),
    ("reduce", include_str!("../../../../kernels/reduce.cu")),
    ("softmax", include_str!("../../../../kernels/softmax.cu")),
];

/// The output of one NVRTC compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The PTX text.
    pub ptx: String,
    /// NVRTC's log: empty unless it had warnings.
    pub log: String,
}

/// True when the NVRTC library (`libnvrtc.so.13`) can be loaded. Calling NVRTC without
/// it would panic inside cudarc.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// The source of kernel file `name` with the shared header pasted in.
fn full_source(name: &str) -> Result<String> {
    let (_, src) = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::invalid("nvrtc", format!("no kernel file {name}.cu")))?;
    Ok(src.replace("#include \"common.cuh\"", COMMON))
}

/// Compiles kernel file `name` for `arch` (e.g. `"sm_90"`); a compile error comes back
/// with NVRTC's log.
pub fn compile(name: &str, arch: &str) -> Result<Compiled> {
    let fail = |msg: String| Error::Backend {
        backend: "nvrtc",
        msg: format!("{name}.cu ({arch}): {msg}"),
    };
    if !nvrtc_present() {
        return Err(fail("libnvrtc not found on the loader path".into()));
    }
    let src = CString::new(full_source(name)?).map_err(|e| fail(e.to_string()))?;
    let file = CString::new(format!("{name}.cu")).map_err(|e| fail(e.to_string()))?;
    let prog = result::create_program(&src, Some(&file)).map_err(|e| fail(e.to_string()))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let outcome = unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog).map(|l| c_text(&l));
        let ptx = compiled.and_then(|_| result::get_ptx(prog).map(|p| c_text(&p)));
        let _ = result::destroy_program(prog);
        (ptx, log)
    };
    match outcome {
        (Ok(ptx), Ok(log)) => Ok(Compiled { ptx, log }),
        (Err(e), log) => Err(fail(format!("{e:?}\n{}", log.unwrap_or_default()))),
        (_, Err(e)) => Err(fail(format!("no log: {e:?}"))),
    }
}

/// A NUL-terminated C buffer as text (log and PTX come this way).
fn c_text(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|s| s.to_string_lossy().trim().to_string())
        .unwrap_or_default()
}
