//! Reading vector sets: `.npy` (f32 or f64, 2-D, C order), `.fvecs`, and IDX (`*-ubyte`, the
//! MNIST format: u8 images flattened to one row each).

use std::path::Path;

use crate::IndexError;

/// (row-major values, dim).
pub fn read_vectors(path: &Path) -> Result<(Vec<f32>, usize), IndexError> {
    let b = std::fs::read(path).map_err(|e| IndexError::file(path, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if b.starts_with(b"\x93NUMPY") {
        read_npy(&b).map_err(|m| IndexError::file(path, m))
    } else if name.ends_with(".fvecs") {
        read_fvecs(&b).map_err(|m| IndexError::file(path, m))
    } else if name.ends_with("ubyte") || name.ends_with(".idx") {
        read_idx(&b).map_err(|m| IndexError::file(path, m))
    } else {
        Err(IndexError::file(path, "unknown vector format (expected .npy, .fvecs, or an IDX *-ubyte file)"))
    }
}

fn read_npy(b: &[u8]) -> Result<(Vec<f32>, usize), String> {
    if b.len() < 12 {
        return Err("truncated .npy header".into());
    }
    let (hl, start): (usize, usize) = if b[6] == 1 { (u16::from_le_bytes([b[8], b[9]]) as usize, 10) } else { (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12) };
    let header = std::str::from_utf8(b.get(start..start.saturating_add(hl)).ok_or("truncated .npy header")?).map_err(|_| "bad .npy header")?;
    let descr = header.split("'descr':").nth(1).and_then(|s| s.split('\'').nth(1)).ok_or("no descr in .npy header")?;
    let fortran = header.contains("'fortran_order': True");
    let shape: Vec<usize> = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in .npy header")?
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse::<usize>().map_err(|_| format!("bad shape entry {x:?}")))
        .collect::<Result<_, _>>()?;
    if shape.len() != 2 {
        return Err(format!("expected a 2-D array, got shape {shape:?}"));
    }
    let data = &b[start + hl..];
    let n = shape[0].checked_mul(shape[1]).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if shape[1] == 0 {
        return Err(format!("shape {shape:?}: rows of 0 values"));
    }
    let v: Vec<f32> = match descr {
        "<f4" => {
            if Some(data.len()) != n.checked_mul(4) {
                return Err(format!("{} data bytes for shape {shape:?} f32 (truncated?)", data.len()));
            }
            data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        }
        "<f8" => {
            if Some(data.len()) != n.checked_mul(8) {
                return Err(format!("{} data bytes for shape {shape:?} f64 (truncated?)", data.len()));
            }
            data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
        }
        d => return Err(format!("unsupported .npy dtype {d}")),
    };
    if fortran {
        // Column-major (n, d): element (i, j) sits at j·n + i; transpose to rows.
        let (n, d) = (shape[0], shape[1]);
        let mut t = vec![0.0f32; n * d];
        for j in 0..d {
            for i in 0..n {
                t[i * d + j] = v[j * n + i];
            }
        }
        return Ok((t, d));
    }
    Ok((v, shape[1]))
}

fn read_fvecs(b: &[u8]) -> Result<(Vec<f32>, usize), String> {
    if b.len() < 4 {
        return Err("empty .fvecs".into());
    }
    let dim = i32::from_le_bytes(b[..4].try_into().unwrap());
    if dim <= 0 || dim as usize > b.len() {
        return Err(format!("a row of dimension {dim} (not an .fvecs file, or corrupt)"));
    }
    let dim = dim as usize;
    let row = 4 + 4 * dim;
    if !b.len().is_multiple_of(row) {
        return Err(format!("size {} is not a multiple of a {dim}-d row (truncated?)", b.len()));
    }
    let mut v = Vec::with_capacity(b.len() / row * dim);
    for r in b.chunks_exact(row) {
        if i32::from_le_bytes(r[..4].try_into().unwrap()) as usize != dim {
            return Err("rows of different dimensions".into());
        }
        v.extend(r[4..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
    }
    Ok((v, dim))
}

fn read_idx(b: &[u8]) -> Result<(Vec<f32>, usize), String> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0x08 {
        return Err("not an unsigned-byte IDX file".into());
    }
    let nd = b[3] as usize;
    let start = 4 + 4 * nd;
    if nd == 0 || b.len() < start {
        return Err(format!("an IDX header of {nd} dimensions in {} bytes (truncated?)", b.len()));
    }
    let dims: Vec<usize> = (0..nd).map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let n = dims[0];
    let dim = dims[1..].iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("IDX dims {dims:?} overflow"))?;
    if dim == 0 || Some(b.len() - start) != n.checked_mul(dim) {
        return Err(format!("{} bytes for IDX dims {dims:?} (truncated?)", b.len()));
    }
    Ok((b[start..].iter().map(|&x| x as f32).collect(), dim))
}

/// Writes a 2-D f32 .npy (for tests and tools).
pub fn write_npy(path: &Path, v: &[f32], dim: usize) -> Result<(), IndexError> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", v.len() / dim, dim);
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    fmlab_fs::write_atomic(path, &out).map_err(|e| IndexError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_c_and_fortran_order_read_the_same_matrix() {
        let d = std::env::temp_dir().join(format!("fmlab-npy-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let m = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3, row-major
        write_npy(&d.join("c.npy"), &m, 3).unwrap();
        assert_eq!(read_vectors(&d.join("c.npy")).unwrap(), (m.to_vec(), 3));
        // The same matrix in Fortran order: columns (1,4), (2,5), (3,6).
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        for x in [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(d.join("f.npy"), b).unwrap();
        assert_eq!(read_vectors(&d.join("f.npy")).unwrap(), (m.to_vec(), 3));
    }
}
