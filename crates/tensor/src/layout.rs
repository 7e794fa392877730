//! Shape, strides (in elements) and offset: how a tensor's elements sit in its storage.
//! Views (permute, narrow, expand, reshape of contiguous data) change only the layout.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Row-major contiguous (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }
    /// The view of this layout broadcast to `shape` (numpy rules: align right, 1 → n).
    pub fn broadcast_to(&self, shape: &[usize]) -> Option<Layout> {
        if shape.len() < self.rank() {
            return None;
        }
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            let (d, t) = (self.shape[i], shape[extra + i]);
            strides[extra + i] = if d == t {
                self.strides[i]
            } else if d == 1 {
                0
            } else {
                return None;
            };
        }
        Some(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }
}

/// The broadcast shape of two shapes, or None.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Merges adjacent dims that are contiguous with each other in every operand and drops size-1
/// dims, so elementwise loops run over as few, as long, rows as possible. Returns (shape, strides
/// per operand); a scalar becomes shape [1].
pub fn coalesce<const N: usize>(shape: &[usize], strides: [&[usize]; N]) -> (Vec<usize>, [Vec<usize>; N]) {
    let mut sh: Vec<usize> = Vec::new();
    let mut st: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let merge = !sh.is_empty() && (0..N).all(|k| *st[k].last().unwrap() == strides[k][d] * shape[d]);
        if merge {
            *sh.last_mut().unwrap() *= shape[d];
            for k in 0..N {
                *st[k].last_mut().unwrap() = strides[k][d];
            }
        } else {
            sh.push(shape[d]);
            for k in 0..N {
                st[k].push(strides[k][d]);
            }
        }
    }
    if sh.is_empty() {
        sh.push(1);
        for s in st.iter_mut() {
            s.push(1);
        }
    }
    (sh, st)
}

/// Strides that view a tensor of `shape`/`strides` as `new_shape` without copying, if any exist
/// (the same elements in the same row-major order): each run of old dims that are contiguous with
/// one another may be split or merged freely, but not across a stride break. E.g. a [B, T, C]
/// slice of a [B, T, 3C] tensor reshapes to [B, T, H, C/H] as a view.
pub fn view_strides(shape: &[usize], strides: &[usize], new_shape: &[usize]) -> Option<Vec<usize>> {
    let numel: usize = shape.iter().product();
    if numel == 0 || shape.is_empty() {
        return Some(contiguous_strides(new_shape));
    }
    let mut out = vec![0usize; new_shape.len()];
    let mut vd = new_shape.len() as isize - 1;
    // Walk the old dims from the innermost; a chunk ends where the next-outer dim's stride breaks.
    let mut base = strides[shape.len() - 1];
    let (mut chunk, mut vchunk) = (1usize, 1usize);
    for d in (0..shape.len()).rev() {
        chunk *= shape[d];
        let ends = d == 0 || (shape[d - 1] != 1 && strides[d - 1] != chunk * base);
        if ends {
            while vd >= 0 && (vchunk < chunk || new_shape[vd as usize] == 1) {
                out[vd as usize] = vchunk * base;
                vchunk *= new_shape[vd as usize];
                vd -= 1;
            }
            if vchunk != chunk {
                return None;
            }
            if d > 0 {
                base = strides[d - 1];
                chunk = 1;
                vchunk = 1;
            }
        }
    }
    (vd == -1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_strides_split_merge_and_refuse() {
        // A [2, 3, 4] slice (last dim narrowed from 12) splits its last dim, keeps the others.
        assert_eq!(view_strides(&[2, 3, 4], &[36, 12, 1], &[2, 3, 2, 2]), Some(vec![36, 12, 2, 1]));
        // Merging the first two dims works (36 = 3 · 12), merging across the break does not.
        assert_eq!(view_strides(&[2, 3, 4], &[36, 12, 1], &[6, 4]), Some(vec![12, 1]));
        assert_eq!(view_strides(&[2, 3, 4], &[36, 12, 1], &[2, 12]), None);
        // A transpose cannot be flattened; size-1 dims go anywhere.
        assert_eq!(view_strides(&[3, 2], &[1, 3], &[6]), None);
        assert_eq!(view_strides(&[3, 2], &[1, 3], &[3, 1, 2]), Some(vec![1, 6, 3])); // any stride suits the size-1 dim
        assert_eq!(view_strides(&[4], &[2], &[2, 2]), Some(vec![4, 2]));
    }
}
