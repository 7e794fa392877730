//! End-to-end: the binary on a small corpus the test writes. Exact resume, and bad inputs that
//! must end in a clear error (exit code 1, no panic).

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fmlab"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fmlab-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A few documents of varied, repetitive English (enough structure to learn quickly).
fn corpus(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).unwrap();
    let subjects = ["the king", "a fool", "my lord", "the queen", "our army", "this night"];
    let verbs = ["speaks of", "dreams of", "fights for", "weeps for", "waits for", "laughs at"];
    let objects = ["the crown", "his brother", "a storm", "the sea", "sweet music", "old wars"];
    for doc in 0..6 {
        let mut s = String::new();
        for i in 0..400 {
            let k = i * 7 + doc * 13;
            s.push_str(&format!("{} {} {}.\n", subjects[k % 6], verbs[(k / 6) % 6], objects[(k / 36) % 6]));
        }
        std::fs::write(c.join(format!("doc{doc}.txt")), s).unwrap();
    }
    c
}

fn run_cmd(cmd: &mut Command) -> (bool, String, String) {
    run(cmd)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

fn ok(cmd: &mut Command) -> String {
    let (s, out, err) = run(cmd);
    assert!(s, "command failed:\n{err}");
    out
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}; stderr:\n{err}", o.status.code());
    assert!(err.contains(needle), "stderr does not mention {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "panicked:\n{err}");
}

fn tokenizer(d: &Path, c: &Path) -> PathBuf {
    let tok = d.join("tok.fmtok");
    ok(bin().args(["tokenizer", "train", "--vocab-size", "300", "--out"]).arg(&tok).arg("--input").arg(c));
    tok
}

fn train_args(tok: &Path, c: &Path, out: &Path, steps: u64) -> Command {
    let mut cmd = bin();
    cmd.args(["train", "gpt", "--preset", "cpu-tiny", "--batch", "4", "--seq", "32", "--eval-every", "3", "--eval-batches", "2", "--warmup", "2"])
        .args(["--steps", &steps.to_string(), "--checkpoint-every", "100", "--dropout", "0.1", "--tokenizer"])
        .arg(tok)
        .arg("--data")
        .arg(c)
        .arg("--out")
        .arg(out);
    cmd
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn resume_continues_bit_identically() {
    let d = tmp("resume");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    ok(&mut train_args(&tok, &c, &d.join("straight"), 8));
    ok(train_args(&tok, &c, &d.join("split"), 8).args(["--stop-after", "5"]));
    assert_eq!(metrics(&d.join("split")).len(), 5);
    fails_with(&mut train_args(&tok, &c, &d.join("split"), 8), "already holds a run");
    ok(bin().args(["train", "gpt", "--resume"]).arg(d.join("split")));
    let (a, b) = (metrics(&d.join("straight")), metrics(&d.join("split")));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8);
    for (x, y) in a.iter().zip(&b) {
        // Bit-identical: the same f64 values, not merely close (dropout on, so RNG state counts too).
        for k in ["step", "loss", "lr", "grad_norm"] {
            assert_eq!(x[k], y[k], "{k} differs at step {}: {} vs {}", x["step"], x[k], y[k]);
        }
        assert_eq!(x.get("val_loss"), y.get("val_loss"));
    }
    // The model learned something: sample and eval run on the checkpoint.
    let out = ok(bin().args(["sample", "--max-tokens", "20", "--prompt", "the king", "--checkpoint"]).arg(d.join("split")));
    assert!(out.starts_with("the king"), "{out}");
    let ev = ok(bin().arg("eval").arg("--checkpoint").arg(d.join("split")).arg("--data").arg(c.join("doc5.txt")));
    assert!(ev.contains("perplexity") && ev.contains("bits per byte"), "{ev}");
    // A sliding window predicts every token exactly once too.
    let count = |s: &str| s.lines().find(|l| l.starts_with("tokens evaluated")).unwrap().split_whitespace().nth(2).unwrap().to_string();
    let ev2 = ok(bin().args(["eval", "--seq", "32", "--stride", "8", "--checkpoint"]).arg(d.join("split")).arg("--data").arg(c.join("doc5.txt")));
    assert_eq!(count(&ev), count(&ev2), "{ev}\n{ev2}");
    let evals = std::fs::read_to_string(d.join("split/evals.jsonl")).unwrap();
    assert_eq!(evals.lines().count(), 2, "each eval of a run's checkpoint is recorded in its folder");
    fails_with(bin().args(["eval", "--seq", "32", "--stride", "40", "--checkpoint"]).arg(d.join("split")).arg("--data").arg(c.join("doc5.txt")), "--stride 40");
    // The ledger: both runs listed with the same config hash (same resolved config), compared.
    let list = ok(bin().args(["runs", "list"]).arg(&d));
    let rows: Vec<&str> = list.lines().filter(|l| l.starts_with("| straight") || l.starts_with("| split")).collect();
    assert_eq!(rows.len(), 2, "{list}");
    let hash = |row: &str| row.split('|').nth(8).unwrap().trim().to_string();
    assert_eq!(hash(rows[0]), hash(rows[1]));
    let cmp = ok(bin().args(["runs", "compare"]).arg(d.join("straight")).arg(d.join("split")));
    assert!(cmp.contains("val loss"), "{cmp}");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("split/run.json")).unwrap()).unwrap();
    assert_eq!(info["seed"], 1337);
    fails_with(bin().args(["runs", "show"]).arg(d.join("nope")), "not a run folder");
}

/// Ctrl-C mid-run: the step finishes, a checkpoint is written, the exit status is 130 with the
/// resume command; resuming ends exactly where an uninterrupted run does.
#[test]
fn sigint_checkpoints_and_resumes_exactly() {
    let d = tmp("sigint");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    let args = |out: &Path| {
        let mut cmd = bin();
        cmd.args(["train", "gpt", "--preset", "cpu-tiny", "--batch", "8", "--seq", "64", "--steps", "60", "--eval-every", "30", "--eval-batches", "2", "--warmup", "2", "--dropout", "0.1", "--checkpoint-every", "1000", "--tokenizer"])
            .arg(&tok)
            .arg("--data")
            .arg(&c)
            .arg("--out")
            .arg(out);
        cmd
    };
    ok(&mut args(&d.join("straight")));
    let run = d.join("cut");
    let child = args(&run).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Signal once a few steps are logged.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 3 {
        assert!(t0.elapsed().as_secs() < 120, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint written; resume with --resume") && !err.contains("panicked"), "{err}");
    let stopped = metrics(&run).len();
    assert!((3..60).contains(&stopped), "stopped after {stopped} steps");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["step"].as_u64(), Some(stopped as u64), "the checkpoint is at the last finished step");
    ok(bin().args(["train", "gpt", "--resume"]).arg(&run));
    let (a, b) = (metrics(&d.join("straight")), metrics(&run));
    assert_eq!(b.len(), 60);
    for (x, y) in a.iter().zip(&b) {
        for k in ["step", "loss", "grad_norm"] {
            assert_eq!(x[k], y[k], "{k} differs at step {}", x["step"]);
        }
        assert_eq!(x.get("val_loss"), y.get("val_loss"));
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tmp("bad");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    fails_with(bin().args(["train", "gpt", "--preset", "gpt5", "--data"]).arg(&c), "--preset gpt5: unknown preset");
    fails_with(bin().args(["train", "gpt", "--data", "/no/such/file.txt", "--tokenizer"]).arg(&tok), "/no/such/file.txt");
    fails_with(bin().args(["train", "gpt", "--tokenizer", "/no/tok.fmtok", "--data"]).arg(&c), "/no/tok.fmtok");
    fails_with(bin().args(["train", "gpt", "--preset", "cpu-tiny", "--seq", "1000", "--tokenizer"]).arg(&tok).arg("--data").arg(&c), "--seq 1000");
    fails_with(train_args(&tok, &c, &d.join("x"), 2).args(["--tokens-per-step", "100"]), "--tokens-per-step 100");
    fails_with(bin().args(["model", "info", "nope"]), "unknown preset `nope`");

    // A real checkpoint, then damage it in three ways.
    let run = d.join("run");
    ok(&mut train_args(&tok, &c, &run, 2));
    let ck = run.join("checkpoint");
    let model = std::fs::read(ck.join("model.safetensors")).unwrap();
    std::fs::write(ck.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
    fails_with(bin().args(["eval", "--data"]).arg(&c).arg("--checkpoint").arg(&run), "model.safetensors");
    std::fs::write(ck.join("model.safetensors"), &model).unwrap();
    // A GPU that is not there (no driver here; past the last GPU on a GPU machine).
    fails_with(bin().args(["eval", "--device", "cuda:99", "--data"]).arg(&c).arg("--checkpoint").arg(&run), "--device cuda:99");
    fails_with(bin().args(["sample", "--device", "cuda:99", "--checkpoint"]).arg(&run), "--device cuda:99");
    fails_with(bin().args(["sample", "--precision", "fp8", "--checkpoint"]).arg(&run), "--precision fp8");
    let meta = std::fs::read_to_string(ck.join("meta.json")).unwrap();
    std::fs::write(ck.join("meta.json"), meta.replace("\"n_embd\": 64", "\"n_embd\": 32")).unwrap();
    fails_with(bin().args(["sample", "--checkpoint"]).arg(&run), "has shape");
    std::fs::write(ck.join("meta.json"), "{ not json").unwrap();
    fails_with(bin().args(["sample", "--checkpoint"]).arg(&run), "meta.json");
    fails_with(bin().args(["sample", "--checkpoint"]).arg(d.join("nothing")), "not a checkpoint directory");
    std::fs::write(ck.join("meta.json"), &meta).unwrap();

    // One flipped bit in the weights: refused by every reader, naming the file; nothing recorded,
    // nothing overwritten.
    let mut flipped = model.clone();
    let i = flipped.len() - 1000;
    flipped[i] ^= 0x10;
    std::fs::write(ck.join("model.safetensors"), &flipped).unwrap();
    for cmd in [bin().args(["eval", "--data"]).arg(&c).arg("--checkpoint").arg(&run), bin().args(["sample", "--checkpoint"]).arg(&run), bin().args(["train", "gpt", "--steps", "4", "--resume"]).arg(&run)] {
        fails_with(cmd, "model.safetensors: checksum mismatch");
    }
    assert!(!run.join("evals.jsonl").exists(), "a refused eval recorded a result");
    assert_eq!(std::fs::read(ck.join("model.safetensors")).unwrap(), flipped, "a refused resume rewrote the checkpoint");
    std::fs::write(ck.join("model.safetensors"), &model).unwrap();
    // An interrupted save's leftovers are cleaned up with a message; the checkpoint still loads.
    std::fs::create_dir_all(run.join("checkpoint.tmp")).unwrap();
    std::fs::write(run.join("checkpoint.tmp/model.safetensors"), b"half").unwrap();
    let (okk, _, err) = run_cmd(bin().args(["sample", "--max-tokens", "3", "--checkpoint"]).arg(&run));
    assert!(okk && err.contains("interrupted checkpoint save") && !run.join("checkpoint.tmp").exists(), "{err}");
    // A save that crashed after moving the old checkpoint aside: the old one is moved back.
    std::fs::rename(&ck, run.join("checkpoint.old")).unwrap();
    let (okk, _, err) = run_cmd(bin().args(["sample", "--max-tokens", "3", "--checkpoint"]).arg(&run));
    assert!(okk && err.contains("restoring the previous checkpoint") && ck.join("meta.json").is_file(), "{err}");
    fails_with(bin().args(["train", "gpt", "--resume"]).arg(d.join("no-run")), "--resume");

    // A learning rate that blows the model up stops with the step and the culprit named.
    fails_with(train_args(&tok, &c, &d.join("nan"), 50).args(["--lr", "1e30"]), "non-finite");
}

/// Every training and sampling flag out of its range is refused before any work, with the range
/// in the message — negative numbers included (they reach the check, not clap's "unexpected
/// argument"); `--resume` refuses flags that differ from the run's config; `--steps 0` does
/// nothing and says so; a failed start's folder is reused.
#[test]
fn out_of_range_flags_name_their_range() {
    let d = tmp("flags");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    let t = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["train", "gpt", "--preset", "cpu-tiny", "--seq", "32", "--tokenizer"]).arg(&tok).arg("--data").arg(&c).arg("--out").arg(d.join("never")).args(extra);
        cmd
    };
    for (flag, value, needle) in [
        ("--lr", "-1e-3", "--lr -0.001: must be a positive number"),
        ("--lr", "0", "--lr 0: must be a positive number"),
        ("--min-lr", "0.5", "--min-lr 0.5: must be in [0, --lr"),
        ("--weight-decay", "-0.1", "--weight-decay -0.1: must be ≥ 0"),
        ("--beta1", "1", "--beta1 1: must be in [0, 1)"),
        ("--beta2", "-0.5", "--beta2 -0.5: must be in [0, 1)"),
        ("--grad-clip", "-1", "--grad-clip -1: must be > 0, or 0 for no clipping"),
        ("--eval-batches", "0", "--eval-batches 0: must be at least 1"),
        ("--eval-every", "0", "--eval-every 0: must be at least 1"),
        ("--checkpoint-every", "0", "--checkpoint-every 0: must be at least 1"),
        ("--dropout", "1.5", "--dropout 1.5: must be in [0, 1)"),
        ("--batch", "0", "--batch must be positive"),
    ] {
        fails_with(&mut t(&[flag, value]), needle);
    }
    assert!(!d.join("never").exists(), "a refused start made its run folder");
    let (okk, _, err) = run(&mut t(&["--steps", "0"]));
    assert!(okk && err.contains("--steps 0: nothing to train") && !d.join("never").exists(), "{err}");
    fails_with(bin().args(["sample", "--temperature", "-1", "--checkpoint", "x"]), "--temperature -1: must be a finite number >= 0");
    fails_with(bin().args(["sample", "--top-p", "0", "--checkpoint", "x"]), "--top-p 0: must be in (0, 1]");
    fails_with(bin().args(["generate", "--prompt", "hi", "--min-p", "-0.2"]), "--min-p -0.2: must be in [0, 1]");
    fails_with(bin().args(["generate", "--prompt", "hi", "--repetition-penalty", "-1"]), "--repetition-penalty -1");
    fails_with(bin().args(["tokenizer", "train", "--vocab-size", "100", "--out"]).arg(d.join("t.fmtok")).arg("--input").arg(&c), "--vocab-size 100 is too small: it must be at least 256 bytes + 1 special tokens = 257");
    fails_with(bin().args(["tokenizer", "train", "--vocab-size", "4294967296", "--out"]).arg(d.join("t.fmtok")).arg("--input").arg(&c), "--vocab-size 4294967296 is too large");
    fails_with(bin().args(["embed", "--batch", "0", "x"]), "--batch must be positive");

    // --resume with a flag that differs from the run's config: refused, listing it.
    let run_dir = d.join("run");
    ok(&mut train_args(&tok, &c, &run_dir, 3));
    fails_with(bin().args(["train", "gpt", "--lr", "0.5", "--batch", "4", "--steps", "6", "--resume"]).arg(&run_dir), "--lr 0.5 (the run has 0.001)");
    let (okk, _, err) = run(bin().args(["train", "gpt", "--resume"]).arg(&run_dir));
    assert!(okk && err.contains("already at step 3 of 3; nothing to train"), "{err}");
    // A start that failed before its first checkpoint leaves a folder that can be reused.
    let failed = d.join("failed");
    std::fs::create_dir_all(&failed).unwrap();
    std::fs::write(failed.join("run.json"), "{}").unwrap();
    std::fs::write(failed.join("metrics.jsonl"), "").unwrap();
    let (okk, _, err) = run(&mut train_args(&tok, &c, &failed, 2));
    assert!(okk && err.contains("never wrote a checkpoint") && failed.join("checkpoint/meta.json").is_file(), "{err}");
}

#[test]
fn index_build_and_search_with_filter_and_bad_inputs() {
    let d = tmp("index");
    // 500 points on a line (x = i), so the nearest neighbours of x = 100.2 are 100, 101, 99, ...
    let n = 500;
    let v: Vec<f32> = (0..n).flat_map(|i| [i as f32, 0.0, 0.0, 0.0]).collect();
    fmlab_index::vectors::write_npy(&d.join("v.npy"), &v, 4).unwrap();
    fmlab_index::vectors::write_npy(&d.join("q.npy"), &[100.2, 0.0, 0.0, 0.0, 3.9, 0.0, 0.0, 0.0], 4).unwrap();
    let payloads: String = (0..n).map(|i| format!("{{\"parity\": {}, \"tags\": [\"{}\"]}}\n", i % 2, if i % 10 == 0 { "round" } else { "other" })).collect();
    std::fs::write(d.join("p.jsonl"), payloads).unwrap();
    ok(bin().args(["index", "build", "--metric", "l2", "--m", "8", "--ef-construction", "64", "--vectors"]).arg(d.join("v.npy")).arg("--payloads").arg(d.join("p.jsonl")).arg("--out").arg(d.join("i.idx")));
    let out = ok(bin().args(["index", "search", "--k", "3", "--ef", "32", "--index"]).arg(d.join("i.idx")).arg("--queries").arg(d.join("q.npy")));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["100 101 99", "4 3 5"]);
    let out = ok(bin().args(["index", "search", "--k", "2", "--filter", "parity=1", "--index"]).arg(d.join("i.idx")).arg("--queries").arg(d.join("q.npy")));
    assert_eq!(out.lines().next().unwrap(), "101 99");
    let out = ok(bin().args(["index", "search", "--k", "2", "--filter", "tags=round && parity=0", "--index"]).arg(d.join("i.idx")).arg("--queries").arg(d.join("q.npy")));
    assert_eq!(out.lines().next().unwrap(), "100 110");

    fails_with(bin().args(["index", "build", "--metric", "hamming", "--vectors"]).arg(d.join("v.npy")).arg("--out").arg(d.join("x.idx")), "--metric hamming");
    fails_with(bin().args(["index", "search", "--k", "0", "--index"]).arg(d.join("i.idx")).arg("--queries").arg(d.join("q.npy")), "--k 0 --ef 64: both must be at least 1");
    fails_with(bin().args(["index", "build", "--m", "1", "--vectors"]).arg(d.join("v.npy")).arg("--out").arg(d.join("x.idx")), "--m 1: must be at least 2");
    fails_with(bin().args(["index", "search", "--filter", "parity<", "--index"]).arg(d.join("i.idx")).arg("--queries").arg(d.join("q.npy")), "filter");
    let b = std::fs::read(d.join("i.idx")).unwrap();
    std::fs::write(d.join("t.idx"), &b[..b.len() - 9]).unwrap();
    fails_with(bin().args(["index", "search", "--index"]).arg(d.join("t.idx")).arg("--queries").arg(d.join("q.npy")), "t.idx");
    std::fs::write(d.join("bad.npy"), b"\x93NUMPY\x01\x00garbage").unwrap();
    fails_with(bin().args(["index", "build", "--vectors"]).arg(d.join("bad.npy")).arg("--out").arg(d.join("y.idx")), "bad.npy");
}

#[test]
fn generate_and_embed_bad_inputs_are_clear_errors() {
    fails_with(bin().args(["generate", "--model", "/no/such.gguf", "--prompt", "hi"]), "/no/such.gguf");
    fails_with(bin().args(["generate", "--prompt", "hi", "--top-p", "0"]), "--top-p 0");
    fails_with(bin().args(["embed", "--model", "/no/dir", "x"]), "/no/dir");
    // Device and precision flags are checked before a model is loaded.
    fails_with(bin().args(["generate", "--device", "cuda:99", "--prompt", "hi"]), "--device cuda:99");
    fails_with(bin().args(["generate", "--device", "cpu", "--precision", "fp8", "--prompt", "hi"]), "--precision fp8");
    fails_with(bin().args(["embed", "--device", "tpu", "x"]), "--device tpu");
    // A prompt longer than SmolLM2's 8,192-token context (the asset comes from scripts/test.sh).
    let cache = std::env::var_os("FMLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab"));
    let long = "word ".repeat(9000);
    fails_with(bin().env("FMLAB_CACHE", &cache).args(["generate", "--max-tokens", "1", "--prompt", &long]), "context is 8192");
    // --precision bf16 runs the model with bf16 activations (here on the CPU) and says so.
    let (okk, out, err) = run(bin().env("FMLAB_CACHE", &cache).args(["generate", "--device", "cpu", "--precision", "bf16", "--max-tokens", "3", "--temperature", "0", "--prompt", "The capital of France is"]));
    assert!(okk && !out.trim().is_empty(), "{err}");
    assert!(err.contains("cpu, bf16"), "{err}");
}

#[test]
fn data_prepare_reads_every_format_and_trains_from_shards() {
    let d = tmp("prepare");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    // TinyStories .txt: documents separated by <|endoftext|>.
    let stories: String = (0..20).map(|i| format!("Once upon a time the king {i} spoke of the sea.\n<|endoftext|>\n")).collect();
    std::fs::write(d.join("stories.txt"), stories).unwrap();
    // .jsonl with a "text" field (TinyStories/OpenWebText jsonl).
    let jsonl: String = (0..10).map(|i| format!("{{\"text\": \"A fool dreams of the crown {i}.\"}}\n")).collect();
    std::fs::write(d.join("docs.jsonl"), jsonl).unwrap();
    // OpenWebText style: a folder of .txt files, one document each (the corpus folder).
    let out = d.join("shards");
    let (okk, _, err) = run(bin().args(["data", "prepare", "--val-frac", "0.1", "--tokenizer"]).arg(&tok).arg("--input").arg(d.join("stories.txt")).arg(d.join("docs.jsonl")).arg(&c).arg("--out").arg(&out));
    assert!(okk, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("prepare.json")).unwrap()).unwrap();
    assert_eq!(stats["documents"], 20 + 10 + 6, "{stats}");
    assert_eq!(stats["val_documents"], 4);
    assert!(stats["train_tokens"].as_u64().unwrap() > 1000);
    // The shards train directly.
    ok(bin().args(["train", "gpt", "--preset", "cpu-tiny", "--batch", "2", "--seq", "16", "--steps", "2", "--eval-every", "2", "--eval-batches", "1", "--tokenizer"])
        .arg(&tok).arg("--data").arg(out.join("train.tok")).arg("--val-data").arg(out.join("val.tok")).arg("--out").arg(d.join("run")));
    // A shard made with another tokenizer is refused.
    let other = d.join("other.fmtok");
    ok(bin().args(["tokenizer", "train", "--vocab-size", "280", "--out"]).arg(&other).arg("--input").arg(&c));
    fails_with(bin().args(["train", "gpt", "--preset", "cpu-tiny", "--steps", "1", "--tokenizer"]).arg(&other).arg("--data").arg(out.join("train.tok")).arg("--val-data").arg(out.join("val.tok")).arg("--out").arg(d.join("r2")), "tokenized with `tok.fmtok`");
    // A shard with one corrupted id (the high byte of token 7 set): train and eval name the file,
    // the offset and the id instead of panicking.
    let mut shard = std::fs::read(out.join("val.tok")).unwrap();
    // The header: 28 bytes, then the tokenizer id "tok.fmtok" (9 bytes); u16 ids follow.
    let header = 28 + 9;
    assert_eq!(&shard[24..28], &9u32.to_le_bytes());
    shard[header + 2 * 7 + 1] = 0xff;
    std::fs::write(d.join("bad.tok"), &shard).unwrap();
    fails_with(bin().args(["train", "gpt", "--preset", "cpu-tiny", "--seq", "16", "--steps", "1", "--tokenizer"]).arg(&tok).arg("--data").arg(out.join("train.tok")).arg("--val-data").arg(d.join("bad.tok")).arg("--out").arg(d.join("r3")), "at offset 7");
    fails_with(bin().args(["eval", "--seq", "16", "--checkpoint"]).arg(d.join("run")).arg("--data").arg(d.join("bad.tok")), "outside the tokenizer's vocabulary");
    std::fs::write(d.join("bad.jsonl"), "{\"text\": \"ok\"}\n{\"txt\": 3}\n").unwrap();
    fails_with(bin().args(["data", "prepare", "--tokenizer"]).arg(&tok).arg("--input").arg(d.join("bad.jsonl")).arg("--out").arg(d.join("s2")), "bad.jsonl line 2");
}

#[test]
fn an_interrupted_sweep_resumes_exactly_and_reports() {
    let d = tmp("sweep");
    let c = corpus(&d);
    let tok = tokenizer(&d, &c);
    let train: Vec<String> = ["--preset", "cpu-tiny", "--batch", "4", "--seq", "32", "--steps", "12", "--eval-every", "4", "--eval-batches", "2", "--warmup", "2", "--dropout", "0.1", "--data"]
        .iter().map(|s| s.to_string()).chain([c.display().to_string(), "--tokenizer".into(), tok.display().to_string()]).collect();
    let sweep = |root: &Path| {
        ok(bin().args(["sweep", "--group", "g", "--grid", "lr=1e-3,3e-3", "--root"]).arg(root).arg("--").args(&train));
    };
    sweep(&d.join("a"));
    // "Kill" one run of a second, identical sweep after 5 of its 12 steps, then run the sweep.
    let partial = d.join("b/g/lr1e-3_seed1337");
    ok(bin().args(["train", "gpt"]).args(&train).args(["--seed", "1337", "--lr", "1e-3", "--stop-after", "5", "--out"]).arg(&partial));
    sweep(&d.join("b"));
    for run in ["lr1e-3_seed1337", "lr3e-3_seed1337"] {
        let (x, y) = (metrics(&d.join("a/g").join(run)), metrics(&d.join("b/g").join(run)));
        assert_eq!(x.len(), 12);
        for (p, q) in x.iter().zip(&y) {
            for k in ["step", "loss", "grad_norm", "val_loss"] {
                assert_eq!(p.get(k), q.get(k), "{run}: {k} at step {}", p["step"]);
            }
        }
        assert_eq!(y.len(), 12, "{run}: redone steps must not be logged twice");
    }
    assert!(std::fs::read_to_string(d.join("b/g/lr3e-3_seed1337/samples.txt")).unwrap().contains("--- prompt"));
    // A second pass at the best point, spelled differently, adds a seed and reruns nothing.
    let (good, _, out) = run(bin().args(["sweep", "--group", "g", "--grid", "lr=0.001", "--seeds", "2", "--root"]).arg(d.join("b")).arg("--").args(&train));
    assert!(good && out.contains("lr1e-3_seed1337: finished, skipped"), "{out}");
    assert!(d.join("b/g/lr1e-3_seed1338/final.json").is_file() && !d.join("b/g/lr0.001_seed1337").exists());
    let group: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("b/g/group.json")).unwrap()).unwrap();
    assert_eq!(group["sweeps"].as_array().unwrap().len(), 2, "{group}");
    ok(bin().args(["report", "--group"]).arg(d.join("b/g")));
    let md = std::fs::read_to_string(d.join("b/g/report.md")).unwrap();
    assert!(md.contains("| lr1e-3_seed1337 |") && md.contains("fmlab report --group"), "{md}");
    assert!(md.contains("(2 seeds)") && md.contains("--seeds 2"), "{md}");
    for f in ["train_loss", "val_loss", "heatmap"] {
        assert!(std::fs::read_to_string(d.join("b/g").join(format!("{f}.svg"))).unwrap().starts_with("<svg"));
        assert!(std::fs::read(d.join("b/g").join(format!("{f}.png"))).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    }
    fails_with(bin().args(["sweep", "--group", "x", "--grid", "lr=1e-3", "--root"]).arg(&d).args(["--", "--lr", "1"]), "--lr is set by the sweep");
    fails_with(bin().args(["sweep", "--group", "x", "--grid", "momentum=1", "--root"]).arg(&d), "unknown parameter `momentum`");
}

/// The README's "What the main job does" commands, run as written (the binary for `fmlab`, a
/// temporary folder for the run, the four held-out plays for the placeholder, and 2 steps instead
/// of 600 to keep the test short): they must all succeed on the real corpus.
#[test]
fn readme_main_job_commands_run_as_written() {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let section = readme.split("## What the main job does").nth(1).expect("README has the main job section");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let commands: Vec<String> = block.replace("\\\n", " ").lines().map(str::trim).filter(|l| l.starts_with("fmlab ")).map(str::to_string).collect();
    assert_eq!(commands.len(), 4, "{block}");
    let cache = std::env::var_os("FMLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab"));
    let d = tmp("readme");
    let plays = cache.join("shakespeare");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&plays).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "txt")).collect();
    files.sort();
    let held_out: Vec<String> = files[files.len() - 4..].iter().map(|p| p.display().to_string()).collect();
    for c in &commands {
        let c = c.replace("runs/shakespeare-DATE", &d.join("run").display().to_string()).replace(".cache/fmlab", &cache.display().to_string()).replace("--steps 600", "--steps 2");
        let mut args: Vec<String> = c.split_whitespace().skip(1).map(|a| a.trim_matches('"').to_string()).collect();
        if let Some(i) = args.iter().position(|a| a == "<the") {
            args.splice(i..i + 4, held_out.clone());
        }
        // Quoted arguments with spaces: `--prompt "ROMEO."` has none.
        let (okk, out, err) = run(bin().env("FMLAB_CACHE", &cache).args(&args));
        assert!(okk, "README command failed: fmlab {}\n{err}", args.join(" "));
        if args[0] == "sample" {
            assert!(out.contains("ROMEO."), "{out}");
        }
    }
    for f in ["tokenizer.fmtok", "run.json", "config.json", "metrics.jsonl", "final.json", "samples.txt", "checkpoint/meta.json", "evals.jsonl"] {
        assert!(d.join("run").join(f).exists(), "the README lists {f} in the run folder");
    }
}

/// `train clip` on generated scenes: a short run, the same run stopped and resumed (bit-identical
/// losses), retrieval recorded, and its flags range-checked.
#[test]
fn train_clip_runs_resumes_exactly_and_checks_its_flags() {
    let d = tmp("clip");
    let args = |out: &Path, steps: &str| {
        let mut c = bin();
        c.args(["train", "clip", "--device", "cpu", "--batch", "4", "--steps", steps, "--eval-every", "3", "--eval-scenes", "10", "--warmup", "1", "--out"]).arg(out);
        c
    };
    ok(&mut args(&d.join("a"), "4"));
    ok(args(&d.join("b"), "4").args(["--stop-after", "2"]));
    ok(bin().args(["train", "clip", "--device", "cpu", "--resume"]).arg(d.join("b")));
    let (x, y) = (metrics(&d.join("a")), metrics(&d.join("b")));
    assert_eq!((x.len(), y.len()), (4, 4));
    for (p, q) in x.iter().zip(&y) {
        for k in ["step", "loss", "grad_norm", "scale"] {
            assert_eq!(p[k], q[k], "{k} differs at step {}", p["step"]);
        }
    }
    assert!(x[2]["recall"]["i2t"][0].as_f64().is_some(), "retrieval recorded at step 3");
    let fin: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("a/final.json")).unwrap()).unwrap();
    assert_eq!(fin["recall"]["chance_r1"], 0.1);
    // eval clip: retrieval on fresh held-out scenes, recorded in the run folder.
    let ev = ok(bin().args(["eval", "clip", "--device", "cpu", "--scenes", "20", "--checkpoint"]).arg(d.join("a")));
    assert!(ev.contains("| image → text |") && ev.contains("chance R@1 0.0500"), "{ev}");
    let evals = std::fs::read_to_string(d.join("a/evals.jsonl")).unwrap();
    assert!(evals.contains("clip retrieval"), "{evals}");
    fails_with(bin().args(["eval", "clip", "--scenes", "5", "--checkpoint"]).arg(d.join("a")), "--scenes 5: must be at least 10");
    fails_with(bin().args(["eval", "clip", "--checkpoint"]).arg(d.join("nothing")), "a `train clip` run");
    // Scenes as PNGs, indexed by the image tower, searched by text.
    let sc = d.join("scenes");
    ok(bin().args(["clip", "scenes", "--n", "12", "--out"]).arg(&sc));
    assert!(sc.join("000011.png").is_file() && std::fs::read_to_string(sc.join("captions.jsonl")).unwrap().lines().count() == 12);
    ok(bin().args(["clip", "index", "--device", "cpu", "--checkpoint"]).arg(d.join("a")).arg("--images").arg(&sc).arg("--out").arg(d.join("s.idx")));
    let hits = ok(bin().args(["clip", "search", "--device", "cpu", "--k", "3", "--checkpoint"]).arg(d.join("a")).arg("--index").arg(d.join("s.idx")).arg("a red circle"));
    assert_eq!(hits.lines().filter(|l| l.contains(".png")).count(), 3, "{hits}");
    fails_with(bin().args(["clip", "search", "--k", "0", "--checkpoint"]).arg(d.join("a")).arg("--index").arg(d.join("s.idx")).arg("x"), "--k 0");
    // A PNG of another size is refused by name.
    let small = fmlab_data::images::Image::new(8, 8, 3);
    small.save_png(&sc.join("zz-small.png")).unwrap();
    fails_with(bin().args(["clip", "index", "--device", "cpu", "--checkpoint"]).arg(d.join("a")).arg("--images").arg(&sc).arg("--out").arg(d.join("t.idx")), "zz-small.png: 8 × 8");
    for (flag, value, needle) in [("--loss", "ntxent", "--loss ntxent: expected infonce or siglip"), ("--tau", "-1", "--tau -1: expected `learnable` or a positive number"), ("--batch", "1", "--batch 1: a contrastive batch needs at least 2 pairs"), ("--preset", "clip-huge", "--preset clip-huge: unknown preset")] {
        fails_with(bin().args(["train", "clip", "--device", "cpu", "--steps", "2", "--out"]).arg(d.join("never")).args([flag, value]), needle);
    }
    assert!(!d.join("never").join("checkpoint").exists());
}
