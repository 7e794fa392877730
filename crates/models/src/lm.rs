//! The models that generation drives: GPT-2 and Llama as `fmlab_engine::CausalLm`.

use fmlab_engine::CausalLm;
use fmlab_nn::{ContiguousKvCache, KvCache};
use fmlab_tensor::{Device, Tensor};

use crate::{Gpt2, Llama};

impl CausalLm for Gpt2 {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn max_context(&self) -> usize {
        self.cfg.n_ctx
    }
    fn device(&self) -> Device {
        Gpt2::device(self)
    }
    fn new_cache(&self, _batch: usize, max_len: usize) -> Box<dyn KvCache> {
        Box::new(ContiguousKvCache::with_capacity(max_len.min(self.cfg.n_ctx)))
    }
    fn forward(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Tensor {
        let _ng = fmlab_tensor::no_grad();
        self.forward_cached(ids, cache)
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn device(&self) -> Device {
        Llama::device(self)
    }
    fn new_cache(&self, _batch: usize, max_len: usize) -> Box<dyn KvCache> {
        Box::new(ContiguousKvCache::with_capacity(max_len.min(self.cfg.max_position_embeddings)))
    }
    fn forward(&self, ids: &Tensor, cache: &mut dyn KvCache) -> Tensor {
        let _ng = fmlab_tensor::no_grad();
        Llama::forward(self, ids, cache)
    }
}
