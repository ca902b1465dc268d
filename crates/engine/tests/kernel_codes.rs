//! The op codes of the CUDA kernels against the Rust side, without a GPU.
//!
//! The kernels switch on `#define`d numbers (`U_*` unary, `B_*` binary, `C_*`
//! comparison, `RED_*` reduction ops) that the CUDA backend passes as
//! `op.kernel_code()`. This test reads every `#define` with one of those prefixes in
//! `kernels/` and compares names and values with the `KERNEL_CODES` lists of
//! `crates/engine/src/kernel_codes.rs`, both ways: a define no Rust op has, a Rust code
//! with no define, and a value that differs all fail, naming the code and where it is.
//! The prefixes are reserved for op codes in `kernels/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use twinflow_engine::backend::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use twinflow_engine::kernel_codes::KernelCode;

/// Each op enum's name, the prefix of its defines, and its Rust list.
const TABLES: [(&str, &str, &[KernelCode]); 4] = [
    ("UnaryOp", "U_", UnaryOp::KERNEL_CODES),
    ("BinaryOp", "B_", BinaryOp::KERNEL_CODES),
    ("CmpOp", "C_", CmpOp::KERNEL_CODES),
    ("ReduceOp", "RED_", ReduceOp::KERNEL_CODES),
];

const RUST_FILE: &str = "crates/engine/src/kernel_codes.rs";

/// A `#define NAME value` of an op code, and where it is (`kernels/elementwise.cu:9`).
struct Define {
    value: String,
    at: String,
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

/// Every `#define` in `kernels/*.cu` and `*.cuh` whose name starts with one of the
/// op-code prefixes, by name; a name defined twice is reported in `problems`.
fn kernel_defines(problems: &mut Vec<String>) -> BTreeMap<String, Define> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernels_dir())
        .expect("kernels/ is readable")
        .map(|entry| entry.expect("a kernels/ entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .cu files in {:?}", kernels_dir());
    let mut defines = BTreeMap::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).expect("a readable kernel file");
        for (i, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#define") {
                continue;
            }
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            if !TABLES.iter().any(|(_, prefix, _)| key.starts_with(prefix)) {
                continue;
            }
            let at = format!("kernels/{name}:{}", i + 1);
            let define = Define {
                value: value.to_string(),
                at,
            };
            if let Some(first) = defines.insert(key.to_string(), define) {
                problems.push(format!("{key} is defined twice, first at {}", first.at));
            }
        }
    }
    defines
}

#[test]
fn kernel_op_codes_match_the_rust_op_enums() {
    let mut problems = Vec::new();
    let defines = kernel_defines(&mut problems);
    for (enum_name, prefix, codes) in TABLES {
        let mut seen_values = BTreeMap::new();
        for code in codes {
            if !code.name.starts_with(prefix) {
                problems.push(format!(
                    "{} is `{}` in {RUST_FILE}, outside the `{prefix}*` codes of {enum_name}",
                    code.op, code.name
                ));
            }
            if let Some(other) = seen_values.insert(code.value, code.op) {
                problems.push(format!(
                    "{} and {other} share the code {} in {RUST_FILE}",
                    code.op, code.value
                ));
            }
            match defines.get(code.name) {
                None => problems.push(format!(
                    "{} is {} = {} in {RUST_FILE}, but kernels/ has no `#define {}`",
                    code.op, code.name, code.value, code.name
                )),
                Some(d) if d.value != code.value.to_string() => problems.push(format!(
                    "{}: {} defines {}, but {RUST_FILE} gives {} the value {}",
                    code.name, d.at, d.value, code.op, code.value
                )),
                Some(_) => {}
            }
        }
        for (name, d) in defines.iter().filter(|(name, _)| name.starts_with(prefix)) {
            if !codes.iter().any(|code| code.name == name) {
                problems.push(format!(
                    "{} defines {name} = {}, which no {enum_name} has in {RUST_FILE}",
                    d.at, d.value
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "CUDA op codes out of step with the Rust ops:\n  {}",
        problems.join("\n  ")
    );
}
