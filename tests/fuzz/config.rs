//! TOML training configs (`TrainConfig::from_toml`, what `train --config` reads),
//! seeded with every config of configs/. An accepted config must also survive the
//! trip through the resolved `config.toml` a run writes.

use crate::harness::{campaign, extreme, mutate_bytes_a_few, Rng};
use std::path::Path;
use twinflow::engine::report;
use twinflow::flow::train::TrainConfig;

const ORIGIN: &str = "fuzz.toml";

/// The text of every config shipped in configs/.
pub fn shipped_configs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("configs/")
        .map(|e| e.expect("configs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("a config"))
        .collect()
}

/// A value of another kind or at an edge, in TOML.
fn odd_value(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => extreme(rng).to_string(),
        1 => format!("-{}", extreme(rng)),
        2 => rng
            .pick(&[
                "nan", "inf", "-inf", "1e308", "1e-320", "-0.0", "0.5", "1e10", "3.0",
            ])
            .to_string(),
        3 => rng
            .pick(&[
                "\"\"",
                "\"moons\"",
                "\"mnist\"",
                "\"cuda:9\"",
                "\"../x\"",
                "\"\\u0000\"",
            ])
            .to_string(),
        4 => rng
            .pick(&["true", "[]", "[1, 0]", "{}", "[[1]]", "1979-05-27"])
            .to_string(),
        _ => "9".repeat(1 + rng.below(40)),
    }
}

/// The config with one line changed: a value replaced, the line removed, repeated,
/// moved, its key misspelt, or a table header added.
fn mutate_lines(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return odd_value(rng);
    }
    let i = rng.below(lines.len());
    match rng.below(7) {
        0 | 1 => {
            if let Some((key, _)) = lines[i].split_once('=') {
                lines[i] = format!("{key}= {}", odd_value(rng));
            }
        }
        2 => {
            lines.remove(i);
        }
        3 => {
            let line = lines[i].clone();
            let j = rng.below(lines.len() + 1);
            lines.insert(j, line);
        }
        4 => {
            let line = lines.remove(i);
            let j = rng.below(lines.len() + 1);
            lines.insert(j, line);
        }
        5 => {
            let table = *rng.pick(&[
                "[model]",
                "[model.dit]",
                "[method]",
                "[data]",
                "[time]",
                "[schedule]",
                "[sampler]",
                "[[data]]",
                "[optimizer.x]",
                "[]",
            ]);
            lines.insert(i, table.to_string());
        }
        _ => {
            if let Some((key, value)) = lines[i].split_once('=') {
                let key = format!("{}{}", key.trim(), rng.pick(&["_", "s", ".x", " x"]));
                lines[i] = format!("{key} ={value}");
            }
        }
    }
    lines.join("\n")
}

fn make(rng: &mut Rng, seeds: &[String]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    let mut text = seed.clone();
    for _ in 0..1 + rng.below(3) {
        text = mutate_lines(rng, &text);
    }
    let mut bytes = text.into_bytes();
    if rng.one_in(3) {
        let other = rng.pick(seeds).as_bytes().to_vec();
        mutate_bytes_a_few(rng, &mut bytes, &other);
    }
    bytes
}

#[test]
fn fuzz_config() {
    let seeds = shipped_configs();
    let tally = campaign(
        "config",
        ORIGIN,
        |rng, _| make(rng, &seeds),
        |input| {
            // `TrainConfig::load` reads text; bytes that are not UTF-8 become
            // replacement characters here, to reach the parser all the same.
            let text = String::from_utf8_lossy(input);
            let cfg = TrainConfig::from_toml(&text, ORIGIN).map_err(|e| report(&e))?;
            let resolved = cfg
                .to_toml()
                .unwrap_or_else(|e| panic!("an accepted config cannot be written: {e}"));
            let again = TrainConfig::from_toml(&resolved, ORIGIN)
                .unwrap_or_else(|e| panic!("an accepted config does not read back: {e}"));
            assert_eq!(again, cfg, "the resolved config reads back differently");
            Ok(())
        },
    );
    assert!(tally.accepted > 0 && tally.refused.len() > 5);
}
