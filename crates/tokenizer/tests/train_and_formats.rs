//! Trainer determinism and behaviour, file-format round trips, and bad-input errors.

use std::path::PathBuf;

use fmlab_tokenizer::{train_from_files, train_from_texts, AllowedSpecial, Pattern, TrainConfig, Tokenizer};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fmlab-tok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cache() -> PathBuf {
    std::env::var_os("FMLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab"))
}

fn gpt2() -> Tokenizer {
    let d = cache().join("gpt2");
    Tokenizer::from_gpt2_files(&d.join("encoder.json"), &d.join("vocab.bpe")).expect("run scripts/fetch-assets.sh")
}

const TEXT: &str = "the cat sat on the mat. the cat ate the rat. that cat is the fattest cat.\n\
                    <|endoftext|>a hat, a bat, and the cat that sat on them all.\n";

fn cfg(vocab_size: usize) -> TrainConfig {
    TrainConfig { vocab_size, min_frequency: 1, ..TrainConfig::default() }
}

#[test]
fn training_learns_the_obvious_merges_first() {
    let tok = train_from_texts(&[TEXT], &cfg(300)).unwrap();
    // " cat" and "at" are by far the most frequent; the first merge must be "at" (count 14).
    let (l, r, new) = tok.merges()[0];
    assert_eq!((tok.token_bytes(l).unwrap(), tok.token_bytes(r).unwrap()), (&b"a"[..], &b"t"[..]));
    assert_eq!(new, 256);
    // Specials come after the merges, and never take part in them.
    let eot = tok.special_id("<|endoftext|>").unwrap();
    assert_eq!(eot as usize, tok.vocab_size() - 1);
    assert!(tok.merges().iter().all(|m| !tok.token_bytes(m.2).unwrap().windows(2).any(|w| w == b"<|")));
    // It encodes its own training text losslessly and shorter than bytes.
    let ids = tok.encode(TEXT, &AllowedSpecial::All);
    assert_eq!(tok.decode(&ids).unwrap(), TEXT);
    assert!(ids.len() < TEXT.len() / 2, "{} tokens for {} bytes", ids.len(), TEXT.len());
}

#[test]
fn training_is_deterministic() {
    let texts: Vec<String> = (0..200).map(|i| format!("line {i}: {} {}\n", TEXT, i * 7919 % 1000)).collect();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let a = train_from_texts(&refs, &cfg(600)).unwrap();
    // Reversed order and a different thread count must not change the merges.
    let rev: Vec<&str> = refs.iter().rev().copied().collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| train_from_texts(&rev, &cfg(600)).unwrap());
    assert_eq!(a.merges(), b.merges());
    assert_eq!(a.merges().len(), 600 - 257);
}

#[test]
fn training_from_files_streams_and_equals_training_from_text() {
    let d = tmpdir("stream");
    let big: String = (0..3000).map(|i| format!("{i} the quick brown fox jumps over the lazy dog {}\n", i % 17)).collect();
    std::fs::write(d.join("a.txt"), &big).unwrap();
    std::fs::write(d.join("b.txt"), TEXT).unwrap();
    let from_files = train_from_files(&[d.join("a.txt"), d.join("b.txt")], &cfg(500)).unwrap();
    let from_text = train_from_texts(&[&big, TEXT], &cfg(500)).unwrap();
    assert_eq!(from_files.merges(), from_text.merges());
}

#[test]
fn min_frequency_stops_early() {
    let c = TrainConfig { vocab_size: 10_000, min_frequency: 3, ..TrainConfig::default() };
    let tok = train_from_texts(&[TEXT], &c).unwrap();
    assert!(tok.vocab_size() < 300, "{}", tok.vocab_size());
}

#[test]
fn cl100k_pattern_trains_and_round_trips() {
    let c = TrainConfig { pattern: Pattern::Cl100k, ..cfg(400) };
    let tok = train_from_texts(&[TEXT, "numbers 1234567 and CAN'T\r\n\r\n  x"], &c).unwrap();
    for s in [TEXT, "12345 DON'T\r\nfoo   bar"] {
        assert_eq!(tok.decode(&tok.encode(s, &AllowedSpecial::All)).unwrap(), s);
    }
    // cl100k splits digits in groups of at most three.
    let mut chunks = Vec::new();
    tok.pretokenizer().split("1234567", |c| chunks.push(c.to_string()));
    assert_eq!(chunks, ["123", "456", "7"]);
}

#[test]
fn own_format_round_trips_and_rejects_corruption() {
    let d = tmpdir("fmt");
    let tok = train_from_texts(&[TEXT], &cfg(320)).unwrap();
    let p = d.join("t.fmtok");
    tok.save(&p).unwrap();
    let back = Tokenizer::load(&p).unwrap();
    assert_eq!(back.merges(), tok.merges());
    assert_eq!(back.encode(TEXT, &AllowedSpecial::All), tok.encode(TEXT, &AllowedSpecial::All));

    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(d.join("trunc.fmtok"), &bytes[..bytes.len() - 3]).unwrap();
    let e = Tokenizer::load(&d.join("trunc.fmtok")).unwrap_err().to_string();
    assert!(e.contains("trunc.fmtok") && e.contains("truncated"), "{e}");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    std::fs::write(d.join("magic.fmtok"), &bad).unwrap();
    let e = Tokenizer::load(&d.join("magic.fmtok")).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
    let mut v2 = bytes.clone();
    v2[8] = 9;
    std::fs::write(d.join("v9.fmtok"), &v2).unwrap();
    let e = Tokenizer::load(&d.join("v9.fmtok")).unwrap_err().to_string();
    assert!(e.contains("version 9"), "{e}");
    let e = Tokenizer::load(&d.join("missing.fmtok")).unwrap_err().to_string();
    assert!(e.contains("missing.fmtok"), "{e}");
}

#[test]
fn gpt2_survives_every_format() {
    let d = tmpdir("gpt2");
    let g = gpt2();
    let sample = "Hello world, it's a test. <|endoftext|> ünïcödé 12345   spaces\n";
    let want = g.encode(sample, &AllowedSpecial::All);

    g.save(&d.join("g.fmtok")).unwrap();
    assert_eq!(Tokenizer::load(&d.join("g.fmtok")).unwrap().encode(sample, &AllowedSpecial::All), want);

    g.save_hf_json(&d.join("tokenizer.json")).unwrap();
    let hf = Tokenizer::from_hf_json(&d.join("tokenizer.json")).unwrap();
    assert_eq!(hf.merges(), g.merges());
    assert_eq!(hf.encode(sample, &AllowedSpecial::All), want);

    std::fs::write(d.join("r50k.tiktoken"), g.to_tiktoken_ranks()).unwrap();
    let tk = Tokenizer::from_tiktoken_file(&d.join("r50k.tiktoken"), Pattern::Gpt2, &[("<|endoftext|>", 50256)]).unwrap();
    assert_eq!(tk.merges(), g.merges(), "merges recovered from ranks");
    assert_eq!(tk.encode(sample, &AllowedSpecial::All), want);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tmpdir("bad");
    let e = train_from_texts(&[TEXT], &TrainConfig { vocab_size: 100, ..TrainConfig::default() }).unwrap_err().to_string();
    assert!(e.contains("--vocab-size 100") && e.contains("257"), "{e}");
    std::fs::write(d.join("empty.txt"), "").unwrap();
    let e = train_from_files(&[d.join("empty.txt")], &cfg(300)).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = train_from_files(&[d.join("nope.txt")], &cfg(300)).unwrap_err().to_string();
    assert!(e.contains("nope.txt"), "{e}");
    std::fs::write(d.join("encoder.json"), "{not json").unwrap();
    std::fs::write(d.join("vocab.bpe"), "#version: 0.2\n").unwrap();
    let e = Tokenizer::from_gpt2_files(&d.join("encoder.json"), &d.join("vocab.bpe")).unwrap_err().to_string();
    assert!(e.contains("encoder.json"), "{e}");
    std::fs::write(d.join("bad.json"), r#"{"model": {"type": "Unigram"}}"#).unwrap();
    let e = Tokenizer::from_hf_json(&d.join("bad.json")).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("Unigram"), "{e}");
}
