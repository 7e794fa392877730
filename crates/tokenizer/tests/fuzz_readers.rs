//! The tokenizer readers (.fmtok, HF tokenizer.json for BPE and WordPiece) against damaged files
//! (fmlab_fs::mutations): every one is an error naming the file, never a panic; what still loads
//! encodes and decodes without panicking.

use std::path::Path;

use fmlab_tokenizer::{train_from_texts, AllowedSpecial, TrainConfig, Tokenizer, WordPiece};

fn each_mutation(name: &str, good: &[u8], cases: usize, read: impl Fn(&Path) -> Result<(), String>) {
    fmlab_fs::check_reader_survives_damage(name, good, 11, cases, read);
}

fn small() -> Tokenizer {
    let texts: Vec<String> = (0..50).map(|i| format!("the king {i} speaks of the sea, and the queen laughs at old wars.")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    train_from_texts(&texts, &TrainConfig { vocab_size: 300, ..TrainConfig::default() }).unwrap()
}

fn exercise(t: &Tokenizer) -> Result<(), String> {
    let ids = t.encode("the king speaks <|endoftext|> ünïcode", &AllowedSpecial::All);
    let _ = t.decode(&ids).map_err(|e| e.to_string());
    // Ids outside the vocabulary are an error too, not a panic.
    let _ = t.decode(&[u32::MAX, 1 << 20]);
    Ok(())
}

#[test]
fn fmtok_reader_survives_damage() {
    let d = std::env::temp_dir().join(format!("fmlab-fuzz-tok-src-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    small().save(&d.join("t.fmtok")).unwrap();
    let good = std::fs::read(d.join("t.fmtok")).unwrap();
    each_mutation("t.fmtok", &good, 400, |p| exercise(&Tokenizer::load(p).map_err(|e| e.to_string())?));
}

#[test]
fn hf_json_readers_survive_damage() {
    let d = std::env::temp_dir().join(format!("fmlab-fuzz-tok-json-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    small().save_hf_json(&d.join("bpe.json")).unwrap();
    let good = std::fs::read(d.join("bpe.json")).unwrap();
    each_mutation("tokenizer.json", &good, 300, |p| exercise(&Tokenizer::from_hf_json(p).map_err(|e| e.to_string())?));
    // WordPiece: a minimal BERT tokenizer.json.
    let wp = br###"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
        "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "king": 5, "##s": 6, "speak": 7}},
        "normalizer": {"type": "BertNormalizer", "lowercase": true}, "added_tokens": []}"###;
    each_mutation("wordpiece.json", wp, 300, |p| {
        let w = WordPiece::from_hf_json(p).map_err(|e| e.to_string())?;
        let _ = w.encode("The kings speak", 16);
        Ok(())
    });
}
