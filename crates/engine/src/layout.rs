//! Shapes, strides and offsets: how a tensor's elements sit in its storage.
//!
//! Every view op (reshape of contiguous data, permute, broadcast, narrow) only builds a
//! new [`Layout`] over the same storage; the kernels read any layout.

use crate::error::{Error, Result};

/// Shape, strides (in elements) and starting offset of a tensor view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a contiguous tensor of this shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// NumPy broadcasting of two shapes (aligned at the trailing dims).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::shapes(op, &[a, b])),
        })
        .collect()
}

/// Resolves a possibly negative dim (`-1` is the last) against a rank.
pub fn normalize_dim(op: &'static str, dim: isize, shape: &[usize]) -> Result<usize> {
    let rank = shape.len() as isize;
    let d = if dim < 0 { dim + rank } else { dim };
    if d < 0 || d >= rank {
        return Err(Error::DimOutOfRange {
            op,
            dim,
            shape: shape.to_vec(),
        });
    }
    Ok(d as usize)
}

/// Resolves a list of dims, rejecting duplicates; the result is sorted.
pub fn normalize_dims(op: &'static str, dims: &[isize], shape: &[usize]) -> Result<Vec<usize>> {
    let mut out = dims
        .iter()
        .map(|&d| normalize_dim(op, d, shape))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid(op, format!("repeated dim in {dims:?}")));
    }
    Ok(out)
}

impl Layout {
    /// A contiguous row-major layout starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A layout from explicit parts (used by backends and view ops).
    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Layout {
            shape,
            strides,
            offset,
        }
    }

    /// The dims.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements to skip in storage for one step along each dim.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Index of the first element in storage.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are row-major and gap-free (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }

    /// The range of storage this contiguous view covers, if it is contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous()
            .then(|| self.offset..self.offset + self.elem_count())
    }

    /// The storage range when the view covers it densely in some order of its dims (a
    /// contiguous tensor or any permutation of one, as a transpose): what an
    /// order-free reduction over every element may read directly.
    pub fn dense_range(&self) -> Option<std::ops::Range<usize>> {
        let mut dims: Vec<(usize, usize)> = (self.strides.iter().copied())
            .zip(self.shape.iter().copied())
            .filter(|&(_, n)| n != 1)
            .collect();
        if dims.iter().any(|&(_, n)| n == 0) {
            return Some(self.offset..self.offset);
        }
        dims.sort_unstable();
        let mut span = 1;
        for (stride, n) in dims {
            if stride != span {
                return None;
            }
            span *= n;
        }
        Some(self.offset..self.offset + span)
    }

    /// The same elements under a new shape; only for contiguous layouts.
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        self.is_contiguous().then(|| Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: self.offset,
        })
    }

    /// Dims reordered: dim `i` of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// A sub-range `start..start+len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut shape = self.shape.clone();
        shape[dim] = len;
        Layout {
            shape,
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        }
    }

    /// The view broadcast to `shape` (stride 0 along new or size-1 dims).
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::shapes(op, &[&self.shape, shape]));
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &n) in shape.iter().enumerate().skip(lead) {
            let (own, stride) = (self.shape[i - lead], self.strides[i - lead]);
            strides[i] = match own {
                _ if own == n => stride,
                1 => 0,
                _ => return Err(Error::shapes(op, &[&self.shape, shape])),
            };
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// A size-1 dim inserted at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Layout {
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        let stride = self.strides.get(dim).map_or(1, |&s| s * self.shape[dim]);
        shape.insert(dim, 1);
        strides.insert(dim, stride);
        Layout {
            shape,
            strides,
            offset: self.offset,
        }
    }

    /// The size-1 dim `dim` removed.
    pub fn squeeze(&self, dim: usize) -> Layout {
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        shape.remove(dim);
        strides.remove(dim);
        Layout {
            shape,
            strides,
            offset: self.offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_aligns_trailing_dims() {
        assert_eq!(
            broadcast_shapes("t", &[3, 1, 5], &[4, 5]).unwrap(),
            vec![3, 4, 5]
        );
        assert!(broadcast_shapes("t", &[3, 2], &[4, 2]).is_err());
    }

    #[test]
    fn dense_range_covers_permutations_but_not_gaps_or_broadcasts() {
        let l = Layout::new(vec![2, 3, 4], contiguous_strides(&[2, 3, 4]), 5);
        assert_eq!(l.dense_range(), Some(5..29));
        assert_eq!(l.permute(&[2, 0, 1]).dense_range(), Some(5..29));
        assert_eq!(l.narrow(1, 0, 2).dense_range(), None);
        let b = Layout::contiguous(&[1, 4])
            .broadcast_to("t", &[3, 4])
            .unwrap();
        assert_eq!(b.dense_range(), None);
        assert_eq!(Layout::contiguous(&[0, 4]).dense_range(), Some(0..0));
    }

    #[test]
    fn transposed_view_is_not_contiguous() {
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]);
        assert_eq!(l.strides(), &[1, 3]);
        assert!(!l.is_contiguous());
        assert!(Layout::contiguous(&[2, 1, 3])
            .permute(&[1, 0, 2])
            .is_contiguous());
    }
}
