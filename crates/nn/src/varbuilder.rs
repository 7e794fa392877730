//! Parameters by name. `vb.pp("h").pp(0).pp("attn")` builds the checkpoint key path, so a module
//! built from a HF checkpoint needs no mapping table: the key it asks for is the key in the file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fmlab_tensor::{DType, Rng, Tensor};

use crate::NnError;

/// How a freshly created parameter is filled.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    Normal { std: f64 },
    /// Every element this value (a learned scale's or bias's starting point).
    Constant(f64),
}

/// The model's variables in creation order (deterministic iteration for optimizers and files).
#[derive(Default)]
pub struct VarMap {
    names: Vec<String>,
    vars: HashMap<String, Tensor>,
}

impl VarMap {
    pub fn new() -> VarMap {
        VarMap::default()
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.vars.get(name)
    }
    /// (name, var) in creation order.
    pub fn all(&self) -> Vec<(String, Tensor)> {
        self.names.iter().map(|n| (n.clone(), self.vars[n].clone())).collect()
    }
    pub fn num_params(&self) -> usize {
        self.vars.values().map(|v| v.numel()).sum()
    }
    fn insert(&mut self, name: String, t: Tensor) {
        self.names.push(name.clone());
        self.vars.insert(name, t);
    }
    pub fn zero_grad(&self) {
        for v in self.vars.values() {
            v.zero_grad();
        }
    }
}

struct Inner {
    map: VarMap,
    rng: Rng,
    /// When building from a checkpoint: tensors by key.
    source: Option<HashMap<String, Tensor>>,
}

/// Creates (or loads) parameters under a key prefix.
#[derive(Clone)]
pub struct VarBuilder {
    inner: Arc<Mutex<Inner>>,
    prefix: String,
    dtype: DType,
}

impl VarBuilder {
    /// Parameters initialized from `seed`.
    pub fn new(dtype: DType, seed: u64) -> VarBuilder {
        VarBuilder { inner: Arc::new(Mutex::new(Inner { map: VarMap::new(), rng: Rng::new(seed), source: None })), prefix: String::new(), dtype }
    }

    /// Parameters taken from `tensors` (e.g. a safetensors file); every key and shape is checked.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType) -> VarBuilder {
        VarBuilder { inner: Arc::new(Mutex::new(Inner { map: VarMap::new(), rng: Rng::new(0), source: Some(tensors) })), prefix: String::new(), dtype }
    }

    /// A builder for the sub-path `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> VarBuilder {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        VarBuilder { inner: self.inner.clone(), prefix, dtype: self.dtype }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The variable `prefix.name` of `shape`: from the source if there is one, else initialized.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor, NnError> {
        let key = self.path(name);
        let mut g = self.inner.lock().unwrap();
        if let Some(v) = g.map.get(&key) {
            // The same key asked twice (weight tying) is the same variable.
            if v.shape() != shape {
                return Err(NnError::Shape { key, got: v.shape().to_vec(), want: shape.to_vec() });
            }
            return Ok(v.clone());
        }
        let t = match &g.source {
            Some(src) => {
                let t = src.get(&key).ok_or_else(|| NnError::MissingKey(key.clone()))?;
                if t.shape() != shape {
                    return Err(NnError::Shape { key, got: t.shape().to_vec(), want: shape.to_vec() });
                }
                t.to_dtype(self.dtype)
            }
            None => match init {
                Init::Zeros => Tensor::zeros(shape, self.dtype),
                Init::Ones => Tensor::ones(shape, self.dtype),
                Init::Normal { std } => Tensor::randn(shape, 0.0, std, self.dtype, &mut g.rng),
                Init::Constant(c) => Tensor::full(c, shape, self.dtype),
            },
        };
        let v = Tensor::new_var(&t);
        g.map.insert(key, v.clone());
        Ok(v)
    }

    /// Source keys the model never asked for (a checkpoint for another model shows up here).
    pub fn unused_keys(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        let mut v: Vec<String> = match &g.source {
            Some(src) => src.keys().filter(|k| g.map.get(k).is_none()).cloned().collect(),
            None => vec![],
        };
        v.sort();
        v
    }

    /// Moves every variable created so far to `device`, in place (models holding them follow).
    pub fn to_device(&self, device: fmlab_tensor::Device) {
        for (_, v) in self.vars() {
            v.move_to_device(device);
        }
    }

    /// The variables created so far, in order.
    pub fn vars(&self) -> Vec<(String, Tensor)> {
        self.inner.lock().unwrap().map.all()
    }
}
