//! Runtime choice of instruction set for the element loops.
//!
//! The binary targets baseline x86-64 (SSE2), so that it runs on any x86-64 machine.
//! The hot loops are compiled twice more, with AVX2 and FMA and with AVX-512, and the
//! widest copy the CPU supports runs: transcendental activations (GELU, SiLU, exp,
//! tanh) are compute-bound and run about 2.5× faster with eight lanes than with four,
//! and faster again with sixteen.

/// `loop_body(out, args)`, compiled for AVX2 + FMA when this CPU supports them.
#[inline(always)]
pub fn dispatch<A, R>(body: impl FnOnce(A) -> R, args: A) -> R {
    #[cfg(target_arch = "x86_64")]
    match best() {
        // SAFETY: the CPU supports the features these copies are compiled with (checked).
        Isa::Avx512 => return unsafe { avx512(body, args) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { avx2_fma(body, args) },
        Isa::Baseline => {}
    }
    body(args)
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn best() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    use std::sync::OnceLock;
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            Isa::Avx512
        } else if has!("avx2") && has!("fma") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    })
}

/// The body inlined here is compiled with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fma<A, R>(body: impl FnOnce(A) -> R, args: A) -> R {
    body(args)
}

/// The body inlined here is compiled with AVX-512 (and AVX2 and FMA, which it implies
/// on every CPU that has it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512<A, R>(body: impl FnOnce(A) -> R, args: A) -> R {
    body(args)
}
