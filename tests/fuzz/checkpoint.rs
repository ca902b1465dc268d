//! Safetensors checkpoints: the header, the tensors it describes and the JSON of the
//! metadata (`Checkpoint::from_bytes`, what `Checkpoint::load` reads), and a trainer
//! rebuilt from what they hold (`Trainer::from_loaded_checkpoint`, what `sample`,
//! `eval` and `train --resume` do next).

use crate::harness::{campaign, extreme, mutate_bytes_a_few, Rng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use twinflow::engine::report;
use twinflow::flow::train::{RestoreOptions, TrainConfig, Trainer};
use twinflow::nn::Checkpoint;

const ORIGIN: &str = "fuzz.safetensors";

/// A tiny moons run's checkpoint after two steps (model, EMA, optimizer, generators,
/// the trainer's config).
fn trainer_checkpoint(dir: &Path, ema_decay: f64) -> Vec<u8> {
    let toml = format!(
        r#"
steps = 2
ema_decay = {ema_decay}
[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 8
depth = 1
emb_dim = 4
num_classes = 2
[method]
name = "twinflow"
[data]
dataset = "moons"
batch_size = 8
"#
    );
    let cfg = TrainConfig::from_toml(&toml, "seed.toml").expect("the seed config");
    let mut trainer = Trainer::new(cfg).expect("the seed trainer");
    trainer.step().expect("a step");
    trainer.step().expect("a step");
    let path = trainer.save(dir).expect("the seed checkpoint");
    std::fs::read(path).expect("the seed checkpoint")
}

/// A file split into its header's JSON and the tensor bytes after it, if it has one.
fn parse(file: &[u8]) -> Option<(Value, &[u8])> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(file.get(8..8usize.checked_add(len)?)?).ok()?;
    Some((header, &file[8 + len..]))
}

/// The file of `header` and `data`, with the header's true length, or now and then a
/// wrong one.
fn assemble(rng: &mut Rng, header: &Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let len = match rng.one_in(16) {
        true => extreme(rng),
        false => text.len() as u64,
    };
    let mut out = len.to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

/// Every JSON pointer into `value` (`""` for the value itself).
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A JSON value at an edge or of another kind.
fn odd_json(rng: &mut Rng, old: &Value) -> Value {
    match rng.below(9) {
        0 => json!(extreme(rng)),
        1 => json!((extreme(rng) as i64).wrapping_neg()),
        2 => json!(*rng.pick(&[1e308, -1e308, 1e-320, -0.0, 0.5, 1e7, 1e10, 2.5])),
        3 => match old.as_u64() {
            Some(n) => json!(n.saturating_mul(*rng.pick(&[2, 10, 1000, 1 << 20]))),
            None => json!(0),
        },
        4 => json!(*rng.pick(&["", "mlp", "dit", "moons", "mnist", "cuda:3", "F64", "x"])),
        5 => json!(null),
        6 => json!(rng.one_in(2)),
        7 => json!([]),
        _ => json!({}),
    }
}

/// One change somewhere in a JSON document: a value replaced, a member removed, or an
/// array element removed or repeated.
fn mutate_json(rng: &mut Rng, doc: &mut Value) {
    let mut all = Vec::new();
    pointers(doc, String::new(), &mut all);
    let at = rng.pick(&all).clone();
    let (parent, last) = match at.rsplit_once('/') {
        Some((parent, last)) => (
            parent.to_string(),
            last.replace("~1", "/").replace("~0", "~"),
        ),
        None => (String::new(), String::new()),
    };
    let remove = rng.one_in(4) && !at.is_empty();
    match doc.pointer_mut(&parent) {
        Some(Value::Object(map)) if remove => {
            map.remove(&last);
        }
        Some(Value::Array(items)) if remove => {
            if let Ok(i) = last.parse::<usize>() {
                match rng.one_in(2) {
                    true => drop(items.remove(i)),
                    false => items.insert(i, items[i].clone()),
                }
            }
        }
        _ => {
            if let Some(target) = doc.pointer_mut(&at) {
                *target = odd_json(rng, target);
            }
        }
    }
}

/// One change of the header: to the JSON inside a metadata entry (the trainer's
/// config, the optimizer's and EMA's records, the generators), to an entry's text, or
/// to the header's own JSON (tensor dtypes, shapes, offsets, names).
fn mutate_header(rng: &mut Rng, header: &mut Value) {
    let entries: Vec<String> = header
        .get("__metadata__")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if !entries.is_empty() && rng.below(3) < 2 {
        let key = rng.pick(&entries).clone();
        let entry = &mut header["__metadata__"][&key];
        let text = entry.as_str().unwrap_or_default().to_string();
        *entry = match serde_json::from_str::<Value>(&text) {
            Ok(mut inner) if !rng.one_in(8) => {
                for _ in 0..1 + rng.below(3) {
                    mutate_json(rng, &mut inner);
                }
                Value::String(inner.to_string())
            }
            _ => {
                let mut bytes = text.into_bytes();
                mutate_bytes_a_few(rng, &mut bytes, b"{}[]\",:0123456789");
                Value::String(String::from_utf8_lossy(&bytes).into_owned())
            }
        };
    } else {
        mutate_json(rng, header);
    }
}

fn make(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    match (rng.below(4), parse(seed)) {
        (0, _) | (_, None) => {
            let mut file = seed.clone();
            let other = rng.pick(seeds).clone();
            mutate_bytes_a_few(rng, &mut file, &other);
            file
        }
        (_, Some((mut header, data))) => {
            for _ in 0..1 + rng.below(2) {
                mutate_header(rng, &mut header);
            }
            let mut file = assemble(rng, &header, data);
            if rng.one_in(8) {
                mutate_bytes_a_few(rng, &mut file, seed);
            }
            file
        }
    }
}

#[test]
fn fuzz_checkpoint() {
    let dir = std::env::temp_dir().join(format!("twinflow-fuzz-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seeds = vec![
        trainer_checkpoint(&dir.join("ema"), 0.99),
        trainer_checkpoint(&dir.join("no-ema"), 0.0),
    ];
    let origin = PathBuf::from(ORIGIN);
    // Data under a root that does not exist: a config changed to read MNIST fails at
    // once instead of loading it for every input.
    let options = RestoreOptions {
        data_root: Some(dir.join("no-data")),
        device: None,
    };
    let tally = campaign(
        "checkpoint",
        ORIGIN,
        |rng, _| make(rng, &seeds),
        |input| {
            let ck = Checkpoint::from_bytes(input, &origin).map_err(|e| report(&e))?;
            Trainer::from_loaded_checkpoint(&ck, &origin, &options)
                .map(drop)
                .map_err(|e| report(&e))
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(tally.accepted > 0 && tally.refused.len() > 5);
}
