//! The CUDA C sources of `kernels/`, embedded in the binary and compiled with NVRTC at
//! run time (once per process and device, see `cuda::device`).

use crate::error::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};

/// The shared headers, each pasted in place of its `#include "name"` line (NVRTC is
/// given no include path, so the kernels need no CUDA toolkit headers): `common.cuh`
/// for every file, `flash_common.cuh` for the fused attention's two files (after
/// `common.cuh`).
const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../../kernels/common.cuh")),
    (
        "flash_common.cuh",
        include_str!("../../../../kernels/flash_common.cuh"),
    ),
];

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
    (
        "flash_attention_sm90",
        include_str!("../../../../kernels/flash_attention_sm90.cu"),
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

/// The source of kernel file `name` with the shared headers pasted in.
fn full_source(name: &str) -> Result<String> {
    let (_, src) = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::invalid("nvrtc", format!("no kernel file {name}.cu")))?;
    Ok(HEADERS.iter().fold(src.to_string(), |s, (header, text)| {
        s.replace(&format!("#include \"{header}\""), text)
    }))
}

/// The architecture kernel file `name` is compiled for on a device of `arch` (e.g.
/// `"sm_90"`), or `None` where the file is not for that device: `flash_attention_sm90`
/// uses Hopper's warpgroup instructions (`wgmma`), which exist only in the
/// architecture-specific target `sm_90a`, so it is compiled for `sm_90` devices only,
/// as `sm_90a`. Every other file is compiled for the device's own architecture.
pub fn target(name: &str, arch: &str) -> Option<String> {
    match name {
        "flash_attention_sm90" => (arch == "sm_90").then(|| "sm_90a".to_string()),
        _ => Some(arch.to_string()),
    }
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
