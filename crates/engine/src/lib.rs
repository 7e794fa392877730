//! The inference engine's first layer, on token ids only (tokenizers and text stay with the
//! caller): the `CausalLm` trait a model implements to be generated from, one logits processor
//! (temperature, top-k, top-p, min-p, repetition penalty), and one generation loop over a
//! preallocated KV cache (`fmlab_nn::KvCache`). `fmlab sample`, `generate` and `chat` all run it;
//! the paged cache and the scheduler build on it.

mod generate;
mod sampler;

pub use generate::{generate, Generation, Stop};
pub use sampler::{Sampler, SamplingParams};

use fmlab_nn::KvCache;
use fmlab_tensor::{Device, Tensor};

/// A decoder-only language model that generation can drive.
pub trait CausalLm {
    /// Logit columns.
    fn vocab_size(&self) -> usize;
    /// The most tokens one sequence may hold (positions).
    fn max_context(&self) -> usize;
    /// Where the weights are (inputs are moved there).
    fn device(&self) -> Device;
    /// An empty cache for `batch` sequences of up to `max_len` tokens, in the model's layout.
    fn new_cache(&self, batch: usize, max_len: usize) -> Box<dyn KvCache>;
    /// ids [B, T] (i32, on the host) continuing the cache's tokens → logits [B, T, V] (f32),
    /// the block's keys and values appended to `cache`. Runs without gradients.
    fn forward(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Tensor;
}
