//! Fashion-MNIST for CLIP on synthetic IDX files: only the trained classes reach the batches,
//! captions come from the prompt templates, and zero-shot top-1 is counted per group.

use fmlab_data::images::{idx_bytes, Image};
use fmlab_models::bert::BertConfig;
use fmlab_models::clip::{Clip, ClipConfig, ContrastiveLoss, Temperature};
use fmlab_models::vit::{Pool, VitConfig};
use fmlab_nn::VarBuilder;
use fmlab_tensor::DType;
use fmlab_train::clip::{fashion_tokenizer, zero_shot, FashionSet, MAX_TOKENS};

#[test]
fn fashion_batches_hold_only_trained_classes_and_zero_shot_counts_groups() {
    let d = std::env::temp_dir().join(format!("fmlab-fashion-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    // 40 train and 20 test images of 28 × 28, labels cycling through the 10 classes; each
    // image's pixels are its label (so a batch's images tell which classes it drew).
    for (split, n) in [("train", 40u32), ("t10k", 20)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let px: Vec<u8> = labels.iter().flat_map(|&l| std::iter::repeat_n(l * 20, 28 * 28)).collect();
        std::fs::write(d.join(format!("{split}-images-idx3-ubyte")), idx_bytes(&[n, 28, 28], &px)).unwrap();
        std::fs::write(d.join(format!("{split}-labels-idx1-ubyte")), idx_bytes(&[n], &labels)).unwrap();
    }
    let train_classes = [0u8, 1, 2, 3, 4, 5, 6];
    let set = FashionSet::load(&d, &train_classes, 1).unwrap();
    assert_eq!((set.train.len(), set.test.len()), (28, 20));
    assert!(set.train.iter().all(|(_, l)| train_classes.contains(l)));
    let tok = fashion_tokenizer().unwrap();
    let b = set.batch(&tok, 8, 3);
    assert_eq!((b[0].shape(), b[1].shape()), (&[8, 28, 28, 1][..], &[8, MAX_TOKENS][..]));
    let seen: Vec<f64> = b[0].to_vec_f64().chunks(28 * 28).map(|c| c[0] * 255.0 / 20.0).collect();
    assert!(seen.iter().all(|&l| l.round() < 7.0), "{seen:?}");
    let vision = VitConfig { image: 28, patch: 7, channels: 1, d_model: 16, layers: 1, heads: 2, mlp_hidden: 32, pool: Pool::Cls, layer_norm_eps: 1e-6 };
    let text = BertConfig { vocab_size: tok.vocab_size(), hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: MAX_TOKENS, type_vocab_size: 1, layer_norm_eps: 1e-12, hidden_act: "gelu".into() };
    let clip = Clip::load(&VarBuilder::new(DType::F32, 2), &ClipConfig { vision, text, embed: 8, loss: ContrastiveLoss::InfoNce, temperature: Temperature::Learnable }).unwrap();
    let z = zero_shot(&clip, &tok, &set.test, &train_classes).unwrap();
    // 14 test images of trained classes, 6 held out; the fractions are counts over them.
    for (v, n) in [(z.top1_trained, 14.0), (z.top1_held_out, 6.0), (z.top1, 20.0)] {
        assert!((0.0..=1.0).contains(&v) && ((v * n).round() - v * n).abs() < 1e-9, "{z:?}");
    }
    // An image of the wrong size is refused.
    let wrong = vec![(Image::new(10, 10, 1), 0u8)];
    assert!(zero_shot(&clip, &tok, &wrong, &train_classes).unwrap_err().to_string().contains("the model takes 28 × 28"));
    let _ = std::fs::remove_dir_all(&d);
}
