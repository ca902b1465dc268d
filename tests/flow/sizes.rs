//! Sizes from users and files, and the messages about them: a config's network, batch
//! size or sample count too large for the machine, a checkpoint whose config declares
//! another network than its tensors, an IDX stream larger than memory, a missing key;
//! each a one-line error naming it, never a panic or an abort.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::PathBuf;
use twinflow::engine::report;
use twinflow::flow::data::{parse_idx_images, DataConfig, DataSource};
use twinflow::flow::eval::{evaluate, sample_batched, EvalConfig, SampleLabels};
use twinflow::flow::train::{TrainConfig, Trainer};
use twinflow::nn::Checkpoint;

fn moons(extra_mlp: &str, batch_size: &str) -> String {
    format!(
        r#"# TwinFlow on moons: lr = 1e-3 (a comment with an equals sign)
steps = 2
[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 8
depth = 1
emb_dim = 4
num_classes = 2
{extra_mlp}
[method]
name = "flow_matching"
[data]
dataset = "moons"
batch_size = {batch_size}
"#
    )
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-sizes-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn one_line(message: String) -> String {
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

#[test]
fn a_network_too_large_is_refused_by_the_config_naming_its_table() {
    for width in ["10000000000", "18446744073709551615"] {
        let toml = moons("", "8").replace("width = 8", &format!("width = {width}"));
        let e = one_line(report(
            &TrainConfig::from_toml(&toml, "wide.toml").unwrap_err(),
        ));
        assert!(
            e.contains("wide.toml") && e.contains("model.mlp") && e.contains("parameters"),
            "{e}"
        );
    }
    let toml = moons("label_dropout = nan", "8");
    let e = report(&TrainConfig::from_toml(&toml, "nan.toml").unwrap_err());
    assert!(
        e.contains("model.mlp") && e.contains("label_dropout"),
        "{e}"
    );
    let toml = moons("", "8").replace("steps = 2", "steps = 2\nsample_nfe = [1, 100000000]");
    let e = report(&TrainConfig::from_toml(&toml, "nfe.toml").unwrap_err());
    assert!(e.contains("sample_nfe") && e.contains("100000000"), "{e}");
}

#[test]
fn huge_batches_and_sample_counts_are_errors() {
    // Countable but far beyond any memory, and past what the address space can count.
    for batch in [1_000_000_000_000_000usize, usize::MAX / 2] {
        let mut toy = DataSource::from_config(&DataConfig::named("moons", 1), 0).unwrap();
        let e = one_line(report(&toy.next_batch(batch).unwrap_err()));
        assert!(
            e.contains(&batch.to_string()) || e.contains("address"),
            "{e}"
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut mnist = DataSource::from_name("mnist", &root, 0).unwrap();
    let e = one_line(report(&mnist.next_batch(usize::MAX / 2).unwrap_err()));
    assert!(e.contains("batch") || e.contains("allocate"), "{e}");

    let toml = moons("", "1000000000000000");
    let mut trainer = Trainer::new(TrainConfig::from_toml(&toml, "batch.toml").unwrap()).unwrap();
    let e = one_line(report(&trainer.step().unwrap_err()));
    assert!(e.contains("allocate") || e.contains("address"), "{e}");

    let trainer = Trainer::new(TrainConfig::from_toml(&moons("", "8"), "m.toml").unwrap()).unwrap();
    let sampler = trainer.config().sampler();
    for n in [usize::MAX, 1 << 61] {
        let e = sample_batched(
            &trainer,
            &sampler,
            &SampleLabels::Cycle { n },
            0,
            false,
            8,
            |_| {},
        )
        .unwrap_err();
        one_line(report(&e));
    }
    let cfg = EvalConfig {
        n: usize::MAX / 2,
        nfe: vec![1, 2, 4],
        ..EvalConfig::default()
    };
    let e = report(&evaluate(&trainer, &cfg, None, |_, _| {}).unwrap_err());
    assert!(e.contains("more than can be counted"), "{e}");
}

/// The MLP width in a trainer checkpoint's config metadata.
fn mlp_width(ck: &mut Checkpoint) -> &mut serde_json::Value {
    &mut ck.config.as_mut().unwrap()["train"]["model"]["mlp"]["width"]
}

#[test]
fn a_checkpoint_declaring_another_network_than_it_holds_is_refused_before_building_it() {
    let dir = scratch("declared");
    let mut trainer =
        Trainer::new(TrainConfig::from_toml(&moons("", "8"), "m.toml").unwrap()).unwrap();
    trainer.step().unwrap();
    let path = trainer.save(&dir).unwrap();
    let mut ck = Checkpoint::load(&path).unwrap();
    *mlp_width(&mut ck) = serde_json::json!(10_000_000);
    let crafted = dir.join("crafted.safetensors");
    ck.save(&crafted).unwrap();
    let e = one_line(report(&Trainer::from_checkpoint(&crafted).unwrap_err()));
    assert!(
        e.contains("crafted.safetensors")
            && e.contains("declares a network")
            && e.contains("holds"),
        "{e}"
    );
    // A width past what a network may have is refused the same way.
    *mlp_width(&mut ck) = serde_json::json!(u64::MAX);
    ck.save(&crafted).unwrap();
    let e = report(&Trainer::from_checkpoint(&crafted).unwrap_err());
    assert!(e.contains("more than 2^64"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_keys_are_named_with_their_table_not_a_comment() {
    let toml = moons("", "8").replace("steps = 2\n", "");
    let e = report(&TrainConfig::from_toml(&toml, "c.toml").unwrap_err());
    assert!(
        e.contains("c.toml") && e.contains("required key `steps`") && !e.contains("TwinFlow"),
        "{e}"
    );
    let toml = moons("", "8").replace("batch_size = 8\n", "");
    let e = report(&TrainConfig::from_toml(&toml, "c.toml").unwrap_err());
    assert!(
        e.contains("table [data]") && e.contains("`data.batch_size`"),
        "{e}"
    );
    // A value of the wrong type under a comment that holds `=`: still the key's line.
    let toml = moons("", "8").replace("steps = 2", "steps = \"two\"");
    let e = report(&TrainConfig::from_toml(&toml, "c.toml").unwrap_err());
    assert!(e.contains("key `steps`") && !e.contains("TwinFlow"), "{e}");
}

#[test]
fn a_gzip_stream_larger_than_memory_is_not_called_corrupt() {
    let gzip = |bytes: &[u8]| {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let header = |count: u32, rows: u32, cols: u32| {
        let mut out = vec![0, 0, 8, 3];
        for d in [count, rows, cols] {
            out.extend(d.to_be_bytes());
        }
        out
    };
    // 2^31 × 2^16 × 2^14 = 2^61 bytes declared: no machine holds them.
    let e =
        report(&parse_idx_images(&gzip(&header(1 << 31, 1 << 16, 1 << 14)), "big.gz").unwrap_err());
    assert!(
        e.contains("big.gz")
            && e.contains("more memory than can be allocated")
            && !e.contains("corrupt"),
        "{e}"
    );
    // A stream that does not end where its header says: found after the declared size,
    // with the count of extra bytes.
    let mut long = header(2, 2, 2);
    long.extend([7u8; 8 + 1000]);
    let e = report(&parse_idx_images(&gzip(&long), "long.gz").unwrap_err());
    assert!(e.contains("1000 extra"), "{e}");
    let mut exact = header(2, 2, 2);
    exact.extend([7u8; 8]);
    assert_eq!(
        parse_idx_images(&gzip(&exact), "ok.gz").unwrap().pixels,
        vec![7u8; 8]
    );
}
