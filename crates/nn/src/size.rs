//! A network's parameter count from its config, computed with checked arithmetic before
//! anything is allocated, and the bound it must stay within. Sizes come from users (a
//! config's `width`) and from files (a checkpoint's config metadata); a count that
//! overflows or passes [`MAX_PARAMETERS`] is refused with an error that names it,
//! instead of a "capacity overflow" panic, an allocation abort, or minutes of
//! initialising weights that no machine could train.

use twinflow_engine::{Error, Result};

/// The most parameters a network built from a config may have: 2³¹, 8 GiB per f32
/// copy. Training keeps five copies (θ, θ⁻, the gradient and AdamW's two moments), so
/// larger networks do not train on one GPU, and the networks of this project are
/// thousands of times smaller.
pub const MAX_PARAMETERS: usize = 1 << 31;

/// Parameters of a linear layer with bias, `inputs → outputs`.
pub(crate) fn linear(inputs: usize, outputs: usize) -> Option<usize> {
    inputs.checked_mul(outputs)?.checked_add(outputs)
}

/// The sum of `counts`, `None` when it overflows.
pub(crate) fn sum(counts: &[usize]) -> Option<usize> {
    counts.iter().try_fold(0usize, |acc, &n| acc.checked_add(n))
}

/// `count` when it is known (did not overflow) and at most [`MAX_PARAMETERS`]; else an
/// error for `op` naming the count and the sizes it came from.
pub fn check_parameter_count(
    op: &'static str,
    count: Option<usize>,
    sizes: &dyn std::fmt::Debug,
) -> Result<usize> {
    let too_many = |count: String| Error::OutOfMemory {
        op,
        what: format!(
            "the network would have {count} parameters, more than the {MAX_PARAMETERS} \
             allowed ({sizes:?})"
        ),
    };
    match count {
        Some(n) if n <= MAX_PARAMETERS => Ok(n),
        Some(n) => Err(too_many(n.to_string())),
        None => Err(too_many("more than 2^64".into())),
    }
}
