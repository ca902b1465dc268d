//! IDX image and label files, plain and gzip (`ImageDataset::parse_idx`, what
//! `ImageDataset::load` and the `idx`, `mnist` and `fashion-mnist` datasets read).

use crate::harness::{campaign, extreme, mutate_bytes_a_few, Rng};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use twinflow::engine::report;
use twinflow::flow::data::ImageDataset;

const IMAGES: &str = "fuzz-images-idx3-ubyte";
const LABELS: &str = "fuzz-labels-idx1-ubyte";

fn images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        out.extend(d.to_be_bytes());
    }
    out.extend((0..count * rows * cols).map(|i| (i * 37) as u8));
    out
}

fn labels(count: u32, classes: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend(count.to_be_bytes());
    out.extend((0..count).map(|i| (i % classes) as u8));
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// A plain IDX file mutated: a header dim set to an extreme, bytes changed, or both.
fn mutate_plain(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    if rng.one_in(2) {
        let dims = (data.len().min(16) - 4) / 4;
        if dims > 0 {
            let at = 4 + 4 * rng.below(dims);
            data[at..at + 4].copy_from_slice(&(extreme(rng) as u32).to_be_bytes());
        }
    }
    if rng.one_in(3) {
        // Makes the payload agree with a changed header, or miss it by a little.
        let want = declared_len(&data).map(|n| n.min(1 << 16) + rng.below(3));
        if let Some(want) = want {
            data.resize(want.saturating_sub(1), 7);
        }
    } else if !rng.one_in(3) {
        mutate_bytes_a_few(rng, &mut data, other);
    }
    data
}

/// The file length a plain IDX header declares, if it can be read.
fn declared_len(data: &[u8]) -> Option<usize> {
    let ndims = match data.get(..4)? {
        [0, 0, 8, 3] => 3,
        [0, 0, 8, 1] => 1,
        _ => return None,
    };
    let mut len = 4 + 4 * ndims;
    let mut payload = 1usize;
    for d in 0..ndims {
        let word = data.get(4 + 4 * d..8 + 4 * d)?;
        payload = payload.checked_mul(u32::from_be_bytes(word.try_into().ok()?) as usize)?;
    }
    len = len.checked_add(payload)?;
    Some(len)
}

/// One input: a mutated file, plain or gzip (compressed after mutating, or the gzip
/// stream itself mutated), as the images or as the labels, beside a valid other file.
fn make(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let count = 1 + rng.below(6) as u32;
    let image = images(count, 1 + rng.below(5) as u32, 1 + rng.below(5) as u32);
    let label = labels(count, 1 + rng.below(10) as u32);
    let mutate_images = rng.one_in(2);
    let (seed, other) = match mutate_images {
        true => (&image, &label),
        false => (&label, &image),
    };
    let mutated = match rng.below(4) {
        0 | 1 => mutate_plain(rng, seed, other),
        2 => gzip(&mutate_plain(rng, seed, other)),
        _ => {
            let mut stream = gzip(seed);
            mutate_bytes_a_few(rng, &mut stream, other);
            stream
        }
    };
    let valid = match rng.one_in(2) {
        true => gzip(other),
        false => other.clone(),
    };
    match mutate_images {
        true => (mutated, valid),
        false => (valid, mutated),
    }
}

/// Both files in one input: the images' length (8 bytes), the images, the labels.
fn join((images, labels): (Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let mut out = (images.len() as u64).to_le_bytes().to_vec();
    out.extend(images);
    out.extend(labels);
    out
}

fn split(input: &[u8]) -> (&[u8], &[u8]) {
    let len = u64::from_le_bytes(input[..8].try_into().expect("8 bytes")) as usize;
    input[8..].split_at(len)
}

#[test]
fn fuzz_idx() {
    let tally = campaign(
        "idx",
        "fuzz-",
        |rng, _| join(make(rng)),
        |input| {
            let (images, labels) = split(input);
            let data = ImageDataset::parse_idx((images, IMAGES), (labels, LABELS))
                .map_err(|e| report(&e))?;
            data.num_classes();
            data.check(IMAGES).map_err(|e| report(&e))
        },
    );
    assert!(tally.accepted > 0 && tally.refused.len() > 5);
}
