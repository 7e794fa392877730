//! GPT-2's byte↔unicode table: every byte maps to a printable code point, so vocabularies can be
//! stored as JSON strings. Printable Latin-1 bytes map to themselves; the other 68 bytes map to
//! U+0100.. in byte order.

use std::sync::OnceLock;

/// `byte_to_char()[b]` is the char GPT-2's files use for byte `b`.
pub fn byte_to_char() -> &'static [char; 256] {
    static T: OnceLock<[char; 256]> = OnceLock::new();
    T.get_or_init(|| {
        let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let mut t = ['\0'; 256];
        let mut n = 0;
        for b in 0..256u32 {
            t[b as usize] = if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
        }
        t
    })
}

/// The inverse of [`byte_to_char`]; `None` for chars outside the table.
pub fn char_to_byte(c: char) -> Option<u8> {
    static T: OnceLock<std::collections::HashMap<char, u8>> = OnceLock::new();
    T.get_or_init(|| byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect())
        .get(&c)
        .copied()
}

/// Bytes → GPT-2 file string.
pub fn encode_str(bytes: &[u8]) -> String {
    let t = byte_to_char();
    bytes.iter().map(|&b| t[b as usize]).collect()
}

/// GPT-2 file string → bytes; `None` if a char is not in the table.
pub fn decode_str(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}
