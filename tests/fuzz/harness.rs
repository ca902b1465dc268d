//! The driver shared by every loader's campaign: a seeded generator, the byte-level
//! mutations, and the loop that feeds mutated inputs to a loader and checks that it
//! answers with a value or a one-line error naming the input, never a panic (an abort
//! ends the test binary, which fails the run as surely).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Inputs per loader when `TWINFLOW_FUZZ_INPUTS` is not set: enough to reach every
/// mutation many times, few enough for the normal test suite.
const DEFAULT_INPUTS: usize = 10_000;

/// Inputs per loader: `TWINFLOW_FUZZ_INPUTS`, or [`DEFAULT_INPUTS`].
pub fn inputs() -> usize {
    match std::env::var("TWINFLOW_FUZZ_INPUTS") {
        Ok(n) => n
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("TWINFLOW_FUZZ_INPUTS={n:?} is not a count")),
        Err(_) => DEFAULT_INPUTS,
    }
}

/// SplitMix64: small, fast and seeded, so that a campaign is the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Numbers at the edges of what headers hold: zero, one, the limits of 8, 16, 32 and
/// 64 bits, and their neighbours.
pub const EXTREMES: &[u64] = &[
    0,
    1,
    2,
    3,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// An extreme number, or now and then a random one.
pub fn extreme(rng: &mut Rng) -> u64 {
    match rng.one_in(4) {
        true => rng.next_u64() >> rng.below(64),
        false => *rng.pick(EXTREMES),
    }
}

/// One random byte-level change of `data`: a flipped bit, a byte set to an edge
/// value, bytes inserted, deleted, duplicated or spliced in from `other`, a cut, or a
/// 16-, 32- or 64-bit field (either byte order) set to an extreme.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(11) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b'\n', b'"']);
        }
        2 => {
            let i = at(rng, data.len());
            let n = 1 + rng.below(16);
            let bytes = rng.bytes(n);
            data.splice(i..i, bytes);
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(64));
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(256));
            let copy = data[i..i + n].to_vec();
            let j = at(rng, data.len());
            data.splice(j..j, copy);
        }
        5 if !other.is_empty() => {
            let i = rng.below(other.len());
            let n = 1 + rng.below((other.len() - i).min(256));
            let j = at(rng, data.len());
            let end = (j + n).min(data.len());
            data.splice(j..end, other[i..i + n].iter().copied());
        }
        6 => data.truncate(rng.below(data.len() + 1)),
        7..=9 if !data.is_empty() => {
            let width = *rng.pick(&[2usize, 4, 8]);
            let value = extreme(rng).to_le_bytes();
            let i = rng.below(data.len());
            let end = (i + width).min(data.len());
            let big_endian = rng.one_in(2);
            for (k, byte) in data[i..end].iter_mut().enumerate() {
                *byte = match big_endian {
                    true => value[width - 1 - k],
                    false => value[k],
                };
            }
        }
        _ => {
            let n = rng.below(32);
            data.extend(rng.bytes(n));
        }
    }
}

/// One to four byte-level mutations, more rarely up to sixteen.
pub fn mutate_bytes_a_few(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let rounds = match rng.one_in(8) {
        true => 1 + rng.below(16),
        false => 1 + rng.below(4),
    };
    for _ in 0..rounds {
        mutate_bytes(rng, data, other);
    }
}

/// What a campaign saw: how many inputs were accepted, and the refusals by the start
/// of their message (to show that the mutations reach past the first check).
#[derive(Default)]
pub struct Tally {
    pub accepted: usize,
    pub refused: BTreeMap<String, usize>,
}

impl Tally {
    /// Counts a refusal under its first words (after the origin), numbers left out.
    fn refused(&mut self, message: &str) {
        let words: Vec<&str> = message
            .split([' ', ':', '(', ','])
            .filter(|w| {
                !w.is_empty() && !w.contains("fuzz") && !w.starts_with(|c: char| c.is_ascii_digit())
            })
            .take(4)
            .collect();
        *self.refused.entry(words.join(" ")).or_default() += 1;
    }
}

/// Writes the input to `target/fuzz-failures/` if the loader panics on it (dropped
/// while unwinding), so that the failure can be replayed; it catches nothing.
struct KeepOnPanic<'a> {
    loader: &'a str,
    index: usize,
    input: &'a [u8],
}

impl Drop for KeepOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let path = dir.join(format!("{}-{}.bin", self.loader, self.index));
            if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, self.input).is_ok() {
                eprintln!(
                    "fuzz_{}: input {} kept in {}",
                    self.loader,
                    self.index,
                    path.display()
                );
            }
        }
    }
}

/// Runs `inputs()` inputs through `load`: input `i` comes from `make(rng, i)` with a
/// generator seeded by the loader's name and `i`, so any input can be made again.
/// `load` returns `Ok` when the loader accepted the input and `Err(message)` with the
/// loader's error otherwise; every message must be one line and contain `origin`.
/// Prints the count, the time and the tally, and returns the tally.
pub fn campaign(
    loader: &str,
    origin: &str,
    mut make: impl FnMut(&mut Rng, usize) -> Vec<u8>,
    mut load: impl FnMut(&[u8]) -> Result<(), String>,
) -> Tally {
    let total = inputs();
    let start = Instant::now();
    let mut tally = Tally::default();
    let base = loader
        .bytes()
        .fold(0xF0F0_u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    for index in 0..total {
        let mut rng = Rng::new(base ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let input = make(&mut rng, index);
        let _keep = KeepOnPanic {
            loader,
            index,
            input: &input,
        };
        match load(&input) {
            Ok(()) => tally.accepted += 1,
            Err(message) => {
                assert!(
                    !message.contains('\n') && message.contains(origin),
                    "fuzz_{loader}: input {index}: the error is not one line naming {origin}: \
                     {message:?}"
                );
                tally.refused(&message);
            }
        }
    }
    eprintln!(
        "fuzz_{loader}: {total} inputs in {:.1} s: {} accepted, {} refused",
        start.elapsed().as_secs_f64(),
        tally.accepted,
        total - tally.accepted
    );
    let mut kinds: Vec<(&String, &usize)> = tally.refused.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    for (kind, count) in kinds.iter().take(12) {
        eprintln!("    {count:>8}  {kind}");
    }
    tally
}
