//! The PNG side of a [`Figure`]: an RGB buffer, shapes painted in order (later over earlier).

use crate::{Anchor, Figure, Rgb, Shape};

/// Glyph cell size of the 8×8 bitmap font, and the SVG font size that roughly matches it.
const GLYPH: i64 = 8;
pub(crate) const TEXT_PX: u32 = 11;

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && x < self.w && y < self.h {
            let i = ((y * self.w + x) * 3) as usize;
            self.px[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, c: Rgb) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
        for yy in y0.max(0)..y1.min(self.h) {
            for xx in x0.max(0)..x1.min(self.w) {
                self.set(xx, yy, c);
            }
        }
    }

    /// A segment stepped one pixel at a time along its longer axis; wider strokes paint a
    /// square brush of that width at each step.
    fn segment(&mut self, (ax, ay): (f64, f64), (bx, by): (f64, f64), width: f64, c: Rgb) {
        let n = (bx - ax).abs().max((by - ay).abs()).ceil().max(1.0) as i64;
        let r = ((width - 1.0) / 2.0).round().max(0.0) as i64;
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = ((ax + (bx - ax) * t).round() as i64, (ay + (by - ay) * t).round() as i64);
            for dy in -r..=r {
                for dx in -r..=r {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    fn text(&mut self, x: f64, y: f64, text: &str, anchor: Anchor, vertical: bool) {
        let glyphs: Vec<[u8; 8]> = text.chars().map(glyph).collect();
        let len = glyphs.len() as i64 * GLYPH;
        let shift = match anchor {
            Anchor::Start => 0,
            Anchor::Middle => len / 2,
            Anchor::End => len,
        };
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (k, g) in glyphs.iter().enumerate() {
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        // Along the text: u; across it (baseline at the glyph's 7th row): v.
                        let u = k as i64 * GLYPH + col - shift;
                        let v = row as i64 - 7;
                        if vertical {
                            self.set(x + v, y - u, Rgb::BLACK);
                        } else {
                            self.set(x + u, y + v, Rgb::BLACK);
                        }
                    }
                }
            }
        }
    }
}

/// The 8×8 bitmap of a character (bit i of row r = pixel (i, r)); `?` where the font has none.
fn glyph(ch: char) -> [u8; 8] {
    use font8x8::UnicodeFonts;
    let arrow_down = [0x18, 0x18, 0x18, 0x18, 0x7e, 0x3c, 0x18, 0x00];
    match ch {
        '\u{2193}' => arrow_down,
        '×' => [0x00, 0x63, 0x36, 0x1c, 0x1c, 0x36, 0x63, 0x00],
        c => font8x8::BASIC_FONTS.get(c).or_else(|| font8x8::LATIN_FONTS.get(c)).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]),
    }
}

pub(crate) fn render(f: &Figure) -> Vec<u8> {
    let mut c = Canvas { w: f.width as i64, h: f.height as i64, px: vec![255; f.width as usize * f.height as usize * 3] };
    for s in &f.shapes {
        match s {
            Shape::Rect { x, y, w, h, fill } => c.rect(*x, *y, *w, *h, *fill),
            Shape::Polyline { points, color, width } => {
                for p in points.windows(2) {
                    c.segment(p[0], p[1], *width, *color);
                }
            }
            Shape::Text { x, y, text, anchor, vertical } => c.text(*x, *y, text, *anchor, *vertical),
        }
    }
    c.px
}
