//! safetensors files: save atomically (temp file + fsync + rename), load with clear errors.

use std::collections::HashMap;
use std::path::Path;

use fmlab_tensor::{DType, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::NnError;

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::U8 => Dtype::U8,
    }
}

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::U8 | Dtype::BOOL => DType::U8,
        _ => return None,
    })
}

/// Writes `bytes` to `path` atomically (see `fmlab_fs`): a crash leaves the old file or the new
/// one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    fmlab_fs::write_atomic(path, bytes).map_err(|e| NnError::file(path, e))
}

pub fn serialize(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>, NnError> {
    let data: Vec<(String, Vec<u8>, Vec<usize>, DType)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.to_le_bytes(), t.shape().to_vec(), t.dtype())).collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, b, s, d)| (n.clone(), TensorView::new(to_st(*d), s.clone(), b).expect("consistent view")))
        .collect();
    safetensors::serialize(views, &metadata).map_err(|e| NnError::Other(format!("safetensors: {e}")))
}

pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<(), NnError> {
    write_atomic(path, &serialize(tensors, metadata)?)
}

/// All tensors of a safetensors file, by name.
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>, NnError> {
    let bytes = std::fs::read(path).map_err(|e| NnError::file(path, e))?;
    deserialize(&bytes).map_err(|m| NnError::file(path, m))
}

pub fn deserialize(bytes: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file ({e}); truncated or corrupt?"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() == Dtype::I64 {
            // Index buffers (e.g. BERT's position_ids) are stored as int64; fmlab's ids are i32.
            let v: Vec<i32> = view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).map(|x| i32::try_from(x).map_err(|_| format!("tensor `{name}`: int64 value {x} does not fit in i32"))).collect::<Result<_, _>>()?;
            out.insert(name.clone(), Tensor::from_vec(v, view.shape()));
            continue;
        }
        let dtype = from_st(view.dtype()).ok_or_else(|| format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()))?;
        out.insert(name.clone(), Tensor::from_le_bytes(view.data(), view.shape(), dtype));
    }
    Ok(out)
}

/// The metadata map of a safetensors file (the `__metadata__` header entry).
pub fn metadata(path: &Path) -> Result<HashMap<String, String>, NnError> {
    let bytes = std::fs::read(path).map_err(|e| NnError::file(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| NnError::file(path, format!("not a valid safetensors file ({e})")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
