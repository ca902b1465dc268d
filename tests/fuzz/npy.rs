//! `.npy` data and label arrays (`parse_npy_dataset`, what the `npy` dataset reads).

use crate::harness::{campaign, extreme, mutate_bytes_a_few, Rng};
use twinflow::engine::report;
use twinflow::flow::data::parse_npy_dataset;

const DATA: &str = "fuzz-data.npy";
const LABELS: &str = "fuzz-labels.npy";

/// A `.npy` file as `numpy.save` writes it (format 1.0, C order), from the header's
/// `descr`, `fortran_order` and `shape` texts, with the header length field of
/// `version` (1: 16 bits, 2 and 3: 32 bits).
fn npy(version: u8, descr: &str, fortran: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}");
    let fixed = if version == 1 { 10 } else { 12 };
    while (fixed + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    match version {
        1 => out.extend((header.len() as u16).to_le_bytes()),
        _ => out.extend((header.len() as u32).to_le_bytes()),
    }
    out.extend(header.as_bytes());
    out.extend(payload);
    out
}

fn tuple(dims: &[String]) -> String {
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

/// A dim as the header writes it: usually the right one, else an extreme, a negative,
/// a float, empty or text.
fn dim_text(rng: &mut Rng, right: usize) -> String {
    match rng.below(10) {
        0..=5 => right.to_string(),
        6 | 7 => extreme(rng).to_string(),
        8 => format!("{}{}", extreme(rng), "0".repeat(rng.below(30))),
        _ => rng
            .pick(&["-1", "0", "1.5", "", "L", "2**64", "None", "(2,)", "'3'"])
            .to_string(),
    }
}

/// One input: a data file (float32 or uint8 images, grey, RGB or vectors) and its
/// labels, one of them built with mutated header fields and then, often, bytes.
fn make(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let n = 1 + rng.below(5);
    let shape: Vec<usize> = match rng.below(4) {
        0 => vec![n, 1 + 2 * rng.below(2), 1 + rng.below(4), 1 + rng.below(4)],
        1 => vec![n, 1 + rng.below(4), 1 + rng.below(4)],
        2 => vec![n, 1 + rng.below(8)],
        _ => (0..rng.below(6)).map(|_| 1 + rng.below(3)).collect(),
    };
    let values: usize = shape.iter().product();
    let (descr, size) = *rng.pick(&[("'<f4'", 4), ("'|u1'", 1), ("'<u1'", 1)]);
    let payload: Vec<u8> = match size {
        4 => (0..values)
            .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
            .collect(),
        _ => (0..values).map(|i| (i * 31) as u8).collect(),
    };
    let labels_payload: Vec<u8> = (0..n as i64).flat_map(|l| (l % 3).to_le_bytes()).collect();
    let version = *rng.pick(&[1u8, 1, 1, 2, 3]);
    let dims = |rng: &mut Rng, shape: &[usize], mutate: bool| -> String {
        let texts: Vec<String> = shape
            .iter()
            .map(|&d| match mutate {
                true => dim_text(rng, d),
                false => d.to_string(),
            })
            .collect();
        tuple(&texts)
    };
    let mutate_data = rng.one_in(2);
    let field_mutations = !rng.one_in(4);
    let header_text = |rng: &mut Rng, right: &str, others: &[&str]| -> String {
        match field_mutations && rng.one_in(4) {
            true => rng.pick(others).to_string(),
            false => right.to_string(),
        }
    };
    let types = [
        "'<f8'", "'<i8'", "'|u1'", "'<f4'", "'>f4'", "'|b1'", "''", "'<f4", "f4",
    ];
    let fortran = ["True", "false", "0", "", "False,"];
    let data_shape = dims(rng, &shape, mutate_data && field_mutations);
    let mut data = npy(
        version,
        &header_text(rng, descr, &types),
        &header_text(rng, "False", &fortran),
        &data_shape,
        &payload,
    );
    let labels_shape = dims(rng, &[n], !mutate_data && field_mutations);
    let mut labels = npy(
        version,
        &header_text(rng, "'<i8'", &types),
        &header_text(rng, "False", &fortran),
        &labels_shape,
        &labels_payload,
    );
    let (target, other) = match mutate_data {
        true => (&mut data, labels.clone()),
        false => (&mut labels, data.clone()),
    };
    if !field_mutations || rng.one_in(2) {
        mutate_bytes_a_few(rng, target, &other);
    }
    (data, labels)
}

#[test]
fn fuzz_npy() {
    let tally = campaign(
        "npy",
        "fuzz-",
        |rng, _| {
            let (data, labels) = make(rng);
            let mut out = (data.len() as u64).to_le_bytes().to_vec();
            out.extend(data);
            out.extend(labels);
            out
        },
        |input| {
            let len = u64::from_le_bytes(input[..8].try_into().expect("8 bytes")) as usize;
            let (data, labels) = input[8..].split_at(len);
            let dataset =
                parse_npy_dataset((data, DATA), (labels, LABELS)).map_err(|e| report(&e))?;
            dataset.num_classes();
            Ok(())
        },
    );
    assert!(tally.accepted > 0 && tally.refused.len() > 5);
}
