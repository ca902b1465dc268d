//! The numbers the CUDA kernels know the op enums by.
//!
//! `kernels/elementwise.cu` switches on `U_*` (unary), `B_*` (binary) and `C_*`
//! (comparison) codes and `kernels/common.cuh` on `RED_*` (reduction) codes, each a
//! `#define NAME value`; the CUDA backend passes `op.kernel_code()` as that value. Both
//! sides are written by hand, so each enum also lists its codes by name
//! (`KERNEL_CODES`), generated from the same match arms as `kernel_code`, and
//! `crates/engine/tests/kernel_codes.rs` compares those lists with the defines in
//! `kernels/`. This module is compiled with or without the `cuda` feature, so a
//! mismatch fails that test on any machine, no GPU or NVRTC needed.

use crate::backend::{BinaryOp, CmpOp, ReduceOp, UnaryOp};

/// One op's code in the CUDA kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCode {
    /// The Rust op, as written in the match arm (`UnaryOp::Powf(_)`).
    pub op: &'static str,
    /// The name of the kernels' `#define` (`U_POWF`).
    pub name: &'static str,
    /// Its value.
    pub value: i32,
}

/// Implements `kernel_code` and `KERNEL_CODES` for an op enum from one list of
/// `pattern => "DEFINE" = value` arms. The match is exhaustive, so a new variant does
/// not compile until it has a code, and the list always holds every arm.
macro_rules! kernel_codes {
    ($ty:ident, $file:literal, { $($pat:pat => $name:literal = $value:literal,)+ }) => {
        impl $ty {
            #[doc = concat!("This op's code in `", $file, "`.")]
            pub fn kernel_code(self) -> i32 {
                match self {
                    $($pat => $value,)+
                }
            }

            #[doc = concat!("Every code of `", $file, "`, one per match arm of `kernel_code`.")]
            pub const KERNEL_CODES: &'static [KernelCode] = &[
                $(KernelCode { op: stringify!($pat), name: $name, value: $value },)+
            ];
        }
    };
}

kernel_codes!(UnaryOp, "kernels/elementwise.cu", {
    UnaryOp::Neg => "U_NEG" = 0,
    UnaryOp::Exp => "U_EXP" = 1,
    UnaryOp::Log => "U_LOG" = 2,
    UnaryOp::Sqrt => "U_SQRT" = 3,
    UnaryOp::Rsqrt => "U_RSQRT" = 4,
    UnaryOp::Recip => "U_RECIP" = 5,
    UnaryOp::Square => "U_SQUARE" = 6,
    UnaryOp::Abs => "U_ABS" = 7,
    UnaryOp::Sin => "U_SIN" = 8,
    UnaryOp::Cos => "U_COS" = 9,
    UnaryOp::Tanh => "U_TANH" = 10,
    UnaryOp::Sigmoid => "U_SIGMOID" = 11,
    UnaryOp::Relu => "U_RELU" = 12,
    UnaryOp::GeluTanh => "U_GELU_TANH" = 13,
    UnaryOp::GeluErf => "U_GELU_ERF" = 14,
    UnaryOp::Silu => "U_SILU" = 15,
    UnaryOp::Powf(_) => "U_POWF" = 16,
    UnaryOp::Clamp(..) => "U_CLAMP" = 17,
    UnaryOp::Affine(..) => "U_AFFINE" = 18,
});

kernel_codes!(BinaryOp, "kernels/elementwise.cu", {
    BinaryOp::Add => "B_ADD" = 0,
    BinaryOp::Sub => "B_SUB" = 1,
    BinaryOp::Mul => "B_MUL" = 2,
    BinaryOp::Div => "B_DIV" = 3,
    BinaryOp::Maximum => "B_MAX" = 4,
    BinaryOp::Minimum => "B_MIN" = 5,
});

kernel_codes!(CmpOp, "kernels/elementwise.cu", {
    CmpOp::Eq => "C_EQ" = 0,
    CmpOp::Ne => "C_NE" = 1,
    CmpOp::Lt => "C_LT" = 2,
    CmpOp::Le => "C_LE" = 3,
    CmpOp::Gt => "C_GT" = 4,
    CmpOp::Ge => "C_GE" = 5,
});

kernel_codes!(ReduceOp, "kernels/common.cuh", {
    ReduceOp::Sum => "RED_SUM" = 0,
    ReduceOp::Max => "RED_MAX" = 1,
    ReduceOp::Min => "RED_MIN" = 2,
});
