//! Figures for reports. A [`Figure`] is a list of shapes in pixel coordinates; it renders to SVG
//! (text, scalable) and to PNG (our own rasterizer: lines, rectangles and 8×8 bitmap text), so
//! both files always show the same drawing. Charts ([`line_chart`], [`heatmap`]) build figures.

mod raster;

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const WHITE: Rgb = Rgb(255, 255, 255);
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    pub const LIGHT: Rgb = Rgb(0xee, 0xee, 0xee);
    fn css(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Line colours for series (matplotlib's tab10).
pub const PALETTE: [Rgb; 10] = [
    Rgb(0x1f, 0x77, 0xb4),
    Rgb(0xff, 0x7f, 0x0e),
    Rgb(0x2c, 0xa0, 0x2c),
    Rgb(0xd6, 0x27, 0x28),
    Rgb(0x94, 0x67, 0xbd),
    Rgb(0x8c, 0x56, 0x4b),
    Rgb(0xe3, 0x77, 0xc2),
    Rgb(0x7f, 0x7f, 0x7f),
    Rgb(0xbc, 0xbd, 0x22),
    Rgb(0x17, 0xbe, 0xcf),
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

#[derive(Clone, Debug)]
pub enum Shape {
    Polyline { points: Vec<(f64, f64)>, color: Rgb, width: f64 },
    Rect { x: f64, y: f64, w: f64, h: f64, fill: Rgb },
    /// `y` is the text's baseline; `vertical` rotates it 90° counter-clockwise about (x, y).
    Text { x: f64, y: f64, text: String, anchor: Anchor, vertical: bool },
}

#[derive(Clone, Debug)]
pub struct Figure {
    pub width: u32,
    pub height: u32,
    pub shapes: Vec<Shape>,
}

impl Figure {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Figure {
        let mut f = Figure { width, height, shapes: vec![] };
        f.rect(0.0, 0.0, width as f64, height as f64, Rgb::WHITE);
        f
    }
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, color: Rgb) {
        self.polyline(vec![(x1, y1), (x2, y2)], color, 1.0);
    }
    pub fn polyline(&mut self, points: Vec<(f64, f64)>, color: Rgb, width: f64) {
        self.shapes.push(Shape::Polyline { points, color, width });
    }
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: Rgb) {
        self.shapes.push(Shape::Rect { x, y, w, h, fill });
    }
    pub fn text(&mut self, x: f64, y: f64, text: impl Into<String>, anchor: Anchor) {
        self.shapes.push(Shape::Text { x, y, text: text.into(), anchor, vertical: false });
    }
    pub fn vtext(&mut self, x: f64, y: f64, text: impl Into<String>, anchor: Anchor) {
        self.shapes.push(Shape::Text { x, y, text: text.into(), anchor, vertical: true });
    }

    pub fn to_svg(&self) -> String {
        let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='monospace' font-size='{}'>\n", self.width, self.height, raster::TEXT_PX);
        for sh in &self.shapes {
            let _ = match sh {
                Shape::Polyline { points, color, width } => {
                    let p: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                    writeln!(s, "<polyline fill='none' stroke='{}' stroke-width='{width}' points='{}'/>", color.css(), p.join(" "))
                }
                Shape::Rect { x, y, w, h, fill } => writeln!(s, "<rect x='{x:.1}' y='{y:.1}' width='{w:.1}' height='{h:.1}' fill='{}'/>", fill.css()),
                Shape::Text { x, y, text, anchor, vertical } => {
                    let a = match anchor {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    let rot = if *vertical { format!(" transform='rotate(-90 {x:.1} {y:.1})'") } else { String::new() };
                    writeln!(s, "<text x='{x:.1}' y='{y:.1}' text-anchor='{a}'{rot}>{}</text>", escape(text))
                }
            };
        }
        s + "</svg>\n"
    }

    /// The figure as an 8-bit RGB PNG file.
    pub fn to_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let pixels = raster::render(self);
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&pixels)?;
        Ok(out)
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Lines of (x, y) points per named series, with axes, 5 ticks each and a legend on the right.
pub fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) -> Figure {
    let (w, h, l, r, t, b) = (800.0, 440.0, 70.0, 230.0, 34.0, 44.0);
    let mut f = Figure::new(w as u32, h as u32);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in series.iter().flat_map(|s| s.1.iter()).filter(|p| p.0.is_finite() && p.1.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0); // no points: empty axes
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (y1 - y) / (y1 - y0) * (h - t - b);
    f.text(l, 20.0, title, Anchor::Start);
    f.line(l, h - b, w - r, h - b, Rgb::BLACK);
    f.line(l, t, l, h - b, Rgb::BLACK);
    for i in 0..=4 {
        let (yv, xv) = (y0 + (y1 - y0) * i as f64 / 4.0, x0 + (x1 - x0) * i as f64 / 4.0);
        f.line(l - 4.0, sy(yv), l, sy(yv), Rgb::BLACK);
        f.line(sx(xv), h - b, sx(xv), h - b + 4.0, Rgb::BLACK);
        f.text(l - 6.0, sy(yv) + 4.0, format!("{yv:.3}"), Anchor::End);
        f.text(sx(xv), h - b + 16.0, format!("{xv:.0}"), Anchor::Middle);
    }
    f.text((l + w - r) / 2.0, h - 8.0, xlabel, Anchor::Middle);
    f.vtext(16.0, (t + h - b) / 2.0, ylabel, Anchor::Middle);
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        f.polyline(pts.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|&(x, y)| (sx(x), sy(y))).collect(), c, 1.5);
        let ly = t + 16.0 * i as f64;
        f.rect(w - r + 10.0, ly, 10.0, 10.0, c);
        f.text(w - r + 24.0, ly + 9.0, name.clone(), Anchor::Start);
    }
    f
}

/// A grid of cells `value(row, col)` (None: empty, grey), darker blue = lower, values printed.
pub fn heatmap(title: &str, rows: &[String], cols: &[String], value: &dyn Fn(usize, usize) -> Option<f64>, rlabel: &str, clabel: &str) -> Figure {
    let (cw, ch, l, t) = (110.0, 40.0, 100.0, 72.0);
    let vals: Vec<f64> = (0..rows.len()).flat_map(|i| (0..cols.len()).filter_map(move |j| value(i, j))).collect();
    let (lo, hi) = vals.iter().fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
    let w = (l + cw * cols.len() as f64 + 20.0).max(320.0);
    let h = t + ch * rows.len() as f64 + 30.0;
    let mut f = Figure::new(w as u32, h as u32);
    f.text(10.0, 20.0, title, Anchor::Start);
    f.text(l + cw * cols.len() as f64 / 2.0, 44.0, clabel, Anchor::Middle);
    f.text(l - 8.0, t - 6.0, format!("{rlabel} \u{2193}"), Anchor::End);
    for (j, c) in cols.iter().enumerate() {
        f.text(l + cw * (j as f64 + 0.5), t - 6.0, c.clone(), Anchor::Middle);
    }
    for (i, r) in rows.iter().enumerate() {
        f.text(l - 8.0, t + ch * (i as f64 + 0.6), r.clone(), Anchor::End);
        for j in 0..cols.len() {
            let (x, y) = (l + cw * j as f64, t + ch * i as f64);
            match value(i, j) {
                Some(v) => {
                    let u = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                    let g = (90.0 + 160.0 * u) as u8;
                    f.rect(x + 1.0, y + 1.0, cw - 2.0, ch - 2.0, Rgb(g, g, 255));
                    f.text(x + cw / 2.0, y + ch * 0.6, format!("{v:.4}"), Anchor::Middle);
                }
                None => f.rect(x + 1.0, y + 1.0, cw - 2.0, ch - 2.0, Rgb::LIGHT),
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut r = png::Decoder::new(png_bytes).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        (info, buf)
    }

    #[test]
    fn png_and_svg_show_the_same_shapes() {
        let mut f = Figure::new(40, 20);
        f.rect(2.0, 3.0, 4.0, 5.0, Rgb(255, 0, 0));
        f.line(10.0, 10.0, 30.0, 10.0, Rgb(0, 0, 255));
        let (info, px) = decode(&f.to_png().unwrap());
        assert_eq!((info.width, info.height, info.color_type), (40, 20, png::ColorType::Rgb));
        let at = |x: usize, y: usize| &px[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
        assert_eq!(at(3, 4), [255, 0, 0]); // inside the rectangle
        assert_eq!(at(7, 4), [255, 255, 255]); // right of it
        assert_eq!(at(20, 10), [0, 0, 255]); // on the line
        assert_eq!(at(20, 14), [255, 255, 255]); // off it
        let svg = f.to_svg();
        assert!(svg.contains("fill='#ff0000'") && svg.contains("stroke='#0000ff'"), "{svg}");
    }

    #[test]
    fn text_is_drawn_where_anchored() {
        let mut f = Figure::new(60, 20);
        f.text(30.0, 12.0, "AB", Anchor::Middle);
        let (_, px) = decode(&f.to_png().unwrap());
        let ink: Vec<usize> = (0..60 * 20).filter(|i| px[i * 3] < 128).map(|i| i % 60).collect();
        assert!(!ink.is_empty());
        let (lo, hi) = (*ink.iter().min().unwrap(), *ink.iter().max().unwrap());
        // Two 8-pixel glyphs centred on x = 30.
        assert!(lo >= 22 && hi < 38 && lo < 30 && hi > 30, "ink spans {lo}..={hi}");
        assert!(f.to_svg().contains(">AB</text>"));
    }

    #[test]
    fn charts_render_with_empty_and_nan_input() {
        let s = vec![("a".to_string(), vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)]), ("b".to_string(), vec![])];
        let f = line_chart("t", "step", "loss", &s);
        assert!(f.to_png().is_ok() && f.to_svg().starts_with("<svg"));
        let e = line_chart("t", "x", "y", &[]);
        assert!(e.to_png().is_ok());
        let hm = heatmap("h", &["1".into()], &["a".into(), "b".into()], &|_, j| (j == 0).then_some(1.0), "r", "c");
        assert!(hm.to_png().is_ok() && hm.to_svg().contains("1.0000"));
    }
}
