//! PNG image folders: every file through `decode_png` (how `load_image_folder` reads
//! each one), and every 32nd input through `load_image_folder` itself, as one file of
//! a two-class folder. Mutations know PNG's chunks, and fix the checksums they break
//! so that the decoder gets past them.

use crate::harness::{campaign, extreme, mutate_bytes_a_few, Rng};
use std::path::Path;
use twinflow::engine::report;
use twinflow::flow::data::{decode_png, load_image_folder};

const ORIGIN: &str = "fuzz.png";
const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A small valid PNG of the given colour type and bit depth, with a palette for
/// indexed images.
fn png_file(rng: &mut Rng) -> Vec<u8> {
    use png::{BitDepth, ColorType};
    let (color, depth, channels) = *rng.pick(&[
        (ColorType::Grayscale, BitDepth::Eight, 1),
        (ColorType::Grayscale, BitDepth::Sixteen, 1),
        (ColorType::Grayscale, BitDepth::One, 1),
        (ColorType::Rgb, BitDepth::Eight, 3),
        (ColorType::Rgb, BitDepth::Sixteen, 3),
        (ColorType::Indexed, BitDepth::Eight, 1),
        (ColorType::Indexed, BitDepth::Two, 1),
        (ColorType::GrayscaleAlpha, BitDepth::Eight, 2),
        (ColorType::Rgba, BitDepth::Eight, 4),
    ]);
    let (width, height) = (1 + rng.below(9) as u32, 1 + rng.below(9) as u32);
    let row = (width as usize * depth as usize * channels).div_ceil(8);
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if color == ColorType::Indexed {
            encoder.set_palette(
                (0..=255u8)
                    .flat_map(|i| [i, 255 - i, i / 2])
                    .collect::<Vec<_>>(),
            );
        }
        let mut writer = encoder.write_header().expect("a PNG header");
        let pixels: Vec<u8> = (0..row * height as usize).map(|i| (i * 29) as u8).collect();
        writer.write_image_data(&pixels).expect("PNG pixels");
    }
    out
}

/// CRC-32 of PNG chunks (ISO 3309), bit by bit: the chunks here are small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A chunk: its type and data.
type Chunk = ([u8; 4], Vec<u8>);

/// The chunks after the signature, while they parse.
fn chunks(file: &[u8]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut at = SIGNATURE.len();
    while let Some(head) = file.get(at..at + 8) {
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let Some(data) = file.get(at + 8..at + 8 + len) else {
            break;
        };
        out.push((head[4..8].try_into().expect("4 bytes"), data.to_vec()));
        at += 12 + len;
    }
    out
}

/// The file of `chunks`, each with its length and a correct checksum.
fn file_of(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    for (kind, data) in chunks {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

/// One change to the chunks: an IHDR field set to an edge value, the compressed
/// pixels changed or replaced by other data of about the declared size, a chunk
/// removed, repeated or moved, or a palette, transparency or unknown chunk added.
fn mutate_chunks(rng: &mut Rng, chunks: &mut Vec<Chunk>) {
    if chunks.is_empty() {
        return;
    }
    let i = rng.below(chunks.len());
    match rng.below(8) {
        0 | 1 => {
            if let Some((_, ihdr)) = chunks
                .iter_mut()
                .find(|(k, d)| k == b"IHDR" && d.len() == 13)
            {
                match rng.below(4) {
                    0 => ihdr[0..4].copy_from_slice(&(extreme(rng) as u32).to_be_bytes()),
                    1 => ihdr[4..8].copy_from_slice(&(extreme(rng) as u32).to_be_bytes()),
                    2 => ihdr[8 + rng.below(5)] = *rng.pick(&[0u8, 1, 2, 3, 4, 6, 7, 8, 16, 255]),
                    _ => {
                        ihdr[0..4].copy_from_slice(&(1 + rng.below(300) as u32).to_be_bytes());
                        ihdr[4..8].copy_from_slice(&(1 + rng.below(300) as u32).to_be_bytes());
                    }
                }
            }
        }
        2 => {
            if let Some((_, idat)) = chunks.iter_mut().find(|(k, _)| k == b"IDAT") {
                let other = idat.clone();
                mutate_bytes_a_few(rng, idat, &other);
            }
        }
        3 => {
            if let Some((_, idat)) = chunks.iter_mut().find(|(k, _)| k == b"IDAT") {
                let len = rng.below(2048);
                let raw = rng.bytes(len);
                *idat = zlib(&raw);
            }
        }
        4 => {
            chunks.remove(i);
        }
        5 => {
            let chunk = chunks[i].clone();
            chunks.insert(rng.below(chunks.len() + 1), chunk);
        }
        6 => {
            let chunk = chunks.remove(i);
            chunks.insert(rng.below(chunks.len() + 1), chunk);
        }
        _ => {
            let kind = *rng.pick(&[*b"PLTE", *b"tRNS", *b"gAMA", *b"sBIT", *b"fcTL", *b"zzZz"]);
            let len = *rng.pick(&[0usize, 1, 3, 6, 13, 768, 769]);
            let data = rng.bytes(len);
            chunks.insert(rng.below(chunks.len() + 1), (kind, data));
        }
    }
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("zlib in memory");
    encoder.finish().expect("zlib in memory")
}

fn make(rng: &mut Rng) -> Vec<u8> {
    let seed = png_file(rng);
    match rng.below(3) {
        0 => {
            let mut file = seed;
            let other = png_file(rng);
            mutate_bytes_a_few(rng, &mut file, &other);
            file
        }
        _ => {
            let mut parts = chunks(&seed);
            for _ in 0..1 + rng.below(3) {
                mutate_chunks(rng, &mut parts);
            }
            file_of(&parts)
        }
    }
}

/// A two-class folder under `root` whose first class holds `png` and a valid image.
fn folder(root: &Path, png: &[u8], valid: &[u8]) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(root);
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class))?;
    }
    std::fs::write(root.join("a/0.png"), png)?;
    std::fs::write(root.join("a/1.png"), valid)?;
    std::fs::write(root.join("b/0.png"), valid)
}

#[test]
fn fuzz_png_folder() {
    let root = std::env::temp_dir().join(format!("twinflow-fuzz-png-{}", std::process::id()));
    let valid = png_file(&mut Rng::new(1));
    let mut calls = 0usize;
    let tally = campaign(
        "png_folder",
        "fuzz",
        |rng, _| make(rng),
        |input| {
            calls += 1;
            if calls.is_multiple_of(32) {
                folder(&root, input, &valid).expect("a scratch folder");
                load_image_folder(&root).map_err(|e| report(&e))?;
            }
            decode_png(input, ORIGIN).map(drop).map_err(|e| report(&e))
        },
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(tally.accepted > 0 && tally.refused.len() > 5);
}
