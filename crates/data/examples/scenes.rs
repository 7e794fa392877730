//! Writes a grid of generated scenes as a binary PPM, with their first captions on stdout:
//! `cargo run --release -p fmlab-data --example scenes -- OUT.ppm [train|test] [N]`.

use fmlab_data::scenes::{SceneGen, Split};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).expect("usage: scenes OUT.ppm [train|test] [N]");
    let split = if args.get(2).is_some_and(|s| s == "test") { Split::Test } else { Split::Train };
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let g = SceneGen::new(64, 3, 7);
    let scenes = g.scenes(split, 1, n);
    let cols = 4;
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * 66, rows * 66);
    let mut px = vec![255u8; w * h * 3];
    for (k, s) in scenes.iter().enumerate() {
        let (ox, oy) = ((k % cols) * 66 + 1, (k / cols) * 66 + 1);
        for y in 0..64 {
            for x in 0..64 {
                let i = ((oy + y) * w + ox + x) * 3;
                px[i..i + 3].copy_from_slice(s.image.at(x, y));
            }
        }
        println!("{k:>2}: {}", s.captions.join(" | "));
    }
    let mut f = format!("P6\n{w} {h}\n255\n").into_bytes();
    f.extend(px);
    std::fs::write(out, f).expect("writing the PPM");
    println!("held-out (colour, shape) pairs: {:?}", g.held_out);
}
