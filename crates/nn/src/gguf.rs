//! GGUF v3 (llama.cpp's format): header, metadata of every value type, tensor infos, alignment,
//! and dequantization of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 to f32 tensors. Memory-mapped.
//!
//! Layout: `GGUF` u32 version, u64 tensor count, u64 metadata count; metadata (key string, u32
//! type, value); tensor infos (name, u32 n_dims, u64 dims fastest-first, u32 ggml type, u64 offset);
//! padding to `general.alignment` (32); tensor data. A tensor with dims [ne0, ne1] is a row-major
//! [ne1, ne0] matrix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fmlab_tensor::Tensor;
use half::{bf16, f16};

use crate::NnError;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(x) => x as u64,
            Value::U16(x) => x as u64,
            Value::U32(x) => x as u64,
            Value::U64(x) => x,
            Value::I8(x) if x >= 0 => x as u64,
            Value::I16(x) if x >= 0 => x as u64,
            Value::I32(x) if x >= 0 => x as u64,
            Value::I64(x) if x >= 0 => x as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (GGUF's dims reversed).
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub offset: u64,
}

impl TensorInfo {
    /// Elements, None when the shape's product overflows (a corrupt header).
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

pub struct Gguf {
    path: PathBuf,
    map: memmap2::Mmap,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
}

fn type_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        30 => "BF16",
        _ => "unknown",
    }
}

/// (elements per block, bytes per block) of the supported types.
fn block(t: u32) -> Option<(usize, usize)> {
    Some(match t {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self.b.get(self.pos..self.pos.checked_add(n).ok_or("overflow")?).ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.take(1)?[0]),
            1 => Value::I8(self.take(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err("arrays nested too deeply".into());
                }
                let et = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.b.len() {
                    return Err(format!("array of {n} elements is larger than the file"));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, NnError> {
        let f = std::fs::File::open(path).map_err(|e| NnError::file(path, e))?;
        // SAFETY: read-only map; the file is not expected to change while fmlab runs.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| NnError::file(path, e))?;
        let parsed = Self::parse(&map).map_err(|m| NnError::file(path, format!("{m} (not a GGUF file, or truncated)")))?;
        let (version, metadata, tensors, data_start) = parsed;
        let g = Gguf { path: path.to_path_buf(), map, version, metadata, tensors, data_start };
        for t in &g.tensors {
            if let Some((per, bytes)) = block(t.ggml_type) {
                let end = t.numel().and_then(|n| (n / per).checked_mul(bytes)).and_then(|len| g.data_start.checked_add(t.offset as usize)?.checked_add(len));
                match end {
                    Some(end) if end <= g.map.len() => {}
                    Some(end) => return Err(NnError::file(path, format!("tensor `{}` ends at byte {end}, past the end of the file ({} bytes): truncated", t.name, g.map.len()))),
                    None => return Err(NnError::file(path, format!("tensor `{}`: shape {:?} at offset {} overflows (a corrupt header)", t.name, t.shape, t.offset))),
                }
            }
        }
        Ok(g)
    }

    #[allow(clippy::type_complexity)]
    fn parse(b: &[u8]) -> Result<(u32, HashMap<String, Value>, Vec<TensorInfo>, usize), String> {
        let mut c = Cursor { b, pos: 0 };
        if c.take(4)? != b"GGUF" {
            return Err("bad magic".into());
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version}; fmlab reads versions 2 and 3"));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let k = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0).map_err(|e| format!("metadata `{k}`: {e}"))?;
            metadata.insert(k, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            if nd > 4 {
                return Err(format!("tensor `{name}` has {nd} dims"));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64()? as usize);
            }
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            dims.reverse();
            tensors.push(TensorInfo { name, shape: dims, ggml_type, offset });
        }
        let align = metadata.get("general.alignment").and_then(|v| v.as_u64()).unwrap_or(32) as usize;
        if align == 0 || align > 1 << 20 {
            return Err(format!("general.alignment {align} is not a usable alignment"));
        }
        let data_start = c.pos.div_ceil(align) * align;
        Ok((version, metadata, tensors, data_start))
    }

    pub fn meta(&self, key: &str) -> Result<&Value, NnError> {
        self.metadata.get(key).ok_or_else(|| NnError::file(&self.path, format!("metadata `{key}` is missing")))
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes one tensor to f32.
    pub fn tensor(&self, name: &str) -> Result<Tensor, NnError> {
        let t = self.info(name).ok_or_else(|| NnError::MissingKey(name.to_string()))?;
        let (per, bytes) = block(t.ggml_type).ok_or_else(|| {
            NnError::file(&self.path, format!("tensor `{name}` has unsupported type {} ({}); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1", type_name(t.ggml_type), t.ggml_type))
        })?;
        // In range: checked when the file was opened.
        let n = t.numel().unwrap_or(0);
        if !n.is_multiple_of(per) {
            return Err(NnError::file(&self.path, format!("tensor `{name}`: {n} elements is not a whole number of blocks")));
        }
        let start = self.data_start + t.offset as usize;
        let raw = &self.map[start..start + n / per * bytes];
        Ok(Tensor::from_vec(dequantize(t.ggml_type, raw, n), &t.shape))
    }

    /// All tensors, dequantized, by name.
    pub fn all_tensors(&self) -> Result<HashMap<String, Tensor>, NnError> {
        self.tensors.iter().map(|t| Ok((t.name.clone(), self.tensor(&t.name)?))).collect()
    }
}

/// Block formats (32 elements per block; in each 4-bit block, byte j holds element j in its low
/// nibble and element j + 16 in its high nibble):
/// Q8_0 = f16 d, 32 × i8 q: x = d·q.  Q4_0 = f16 d, 16 bytes: x = d·(q − 8).
/// Q4_1 = f16 d, f16 m, 16 bytes: x = d·q + m.
pub fn dequantize(ty: u32, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        0 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
        1 => out.extend(raw.chunks_exact(2).map(h)),
        30 => out.extend(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        8 => {
            for b in raw.chunks_exact(34) {
                let d = h(&b[..2]);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        2 | 3 => {
            let per = if ty == 2 { 18 } else { 20 };
            for b in raw.chunks_exact(per) {
                let d = h(&b[..2]);
                let (m, qs) = if ty == 2 { (-8.0 * d, &b[2..]) } else { (h(&b[2..4]), &b[4..]) };
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        _ => unreachable!("checked by the caller"),
    }
    out
}
