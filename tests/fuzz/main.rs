//! Fuzzing of every loader of untrusted bytes, on the stable toolchain, one test per
//! loader: IDX files (`fuzz_idx`), `.npy` arrays (`fuzz_npy`), safetensors checkpoints
//! and the trainer rebuilt from them (`fuzz_checkpoint`), TOML configs
//! (`fuzz_config`) and PNG image folders (`fuzz_png_folder`). Each starts from valid
//! files made here and mutates them (bytes flipped, inserted, deleted, spliced and
//! cut; header numbers set to extremes; the formats' own structure changed where a
//! checksum or a length would stop the loader early), and every input must give a
//! value or a one-line error naming the input: a panic fails the test (and keeps the
//! input in target/fuzz-failures/), an abort ends the binary.
//!
//! 10,000 inputs per loader by default; `TWINFLOW_FUZZ_INPUTS=1000000 cargo test
//! --release --test fuzz -- --nocapture` runs a million each (docs/reliability.md
//! gives the time).

mod harness;

mod checkpoint;
mod config;
mod idx;
mod npy;
mod png_folder;
