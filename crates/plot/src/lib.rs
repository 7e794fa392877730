//! Report figures: a chart is described once (`line_chart`, `heatmap`) and drawn with plotters to
//! SVG (text as text, in "DejaVu Sans, sans-serif") and to PNG (text rasterized from DejaVu Sans,
//! embedded through the `dejavu` crate, so no system font or fontconfig is needed). Both show the
//! same drawing: the chart code is generic over plotters' backend.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Series colours (matplotlib's tab10: distinct, and readable on white).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The font family every text uses; registered (for the PNG) from DejaVu Sans.
const FONT: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing the figure: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid TrueType; a failure here would be a build defect.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// A chart, ready to draw to SVG or PNG.
pub struct Figure {
    width: u32,
    height: u32,
    chart: Chart,
}

enum Chart {
    Line { title: String, xlabel: String, ylabel: String, series: Vec<(String, Vec<(f64, f64)>)> },
    Heatmap { title: String, rows: Vec<String>, cols: Vec<String>, values: Vec<Vec<Option<f64>>>, rlabel: String, clabel: String },
}

impl Figure {
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn to_svg(&self) -> Result<String, PlotError> {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (self.width, self.height)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(draw_err)?;
        }
        // plotters names the family as registered; name the font the PNG uses first.
        Ok(s.replace("font-family=\"sans-serif\"", "font-family=\"DejaVu Sans, sans-serif\""))
    }

    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        let (w, h) = (self.width, self.height);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(draw_err)?;
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&rgb)?;
        Ok(out)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        register_font();
        root.fill(&WHITE).map_err(draw_err)?;
        match &self.chart {
            Chart::Line { title, xlabel, ylabel, series } => draw_lines(root, title, xlabel, ylabel, series),
            Chart::Heatmap { title, rows, cols, values, rlabel, clabel } => draw_heatmap(root, title, rows, cols, values, rlabel, clabel),
        }
    }
}

/// Lines of (x, y) points per named series (non-finite points skipped), with labelled axes, a
/// light grid and a legend.
pub fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) -> Figure {
    Figure { width: 900, height: 500, chart: Chart::Line { title: title.into(), xlabel: xlabel.into(), ylabel: ylabel.into(), series: series.to_vec() } }
}

/// A grid of cells `value(row, col)` (None: empty, grey), darker = lower, each value printed.
pub fn heatmap(title: &str, rows: &[String], cols: &[String], value: &dyn Fn(usize, usize) -> Option<f64>, rlabel: &str, clabel: &str) -> Figure {
    let values = (0..rows.len()).map(|i| (0..cols.len()).map(|j| value(i, j)).collect()).collect();
    let width = (140 + 120 * cols.len() as u32).max(420);
    let height = 130 + 50 * rows.len() as u32;
    Figure { width, height, chart: Chart::Heatmap { title: title.into(), rows: rows.to_vec(), cols: cols.to_vec(), values, rlabel: rlabel.into(), clabel: clabel.into() } }
}

/// A tick label with as many decimals as the axis' span needs (none for steps).
fn tick(v: f64, span: f64) -> String {
    let decimals = if span >= 20.0 { 0 } else { (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize };
    format!("{v:.decimals$}")
}

fn finite(pts: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    pts.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite())
}

fn draw_lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<(), PlotError> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in series.iter().flat_map(|s| finite(&s.1)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0); // no points: empty axes
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 { 0.04 * (y1 - y0) } else { 0.5 };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_label_formatter(&|x| tick(*x, x1 - x0))
        .y_label_formatter(&|y| tick(*y, y1 - y0))
        .draw()
        .map_err(draw_err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(finite(pts), c.stroke_width(2)))
            .map_err(draw_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, rows: &[String], cols: &[String], values: &[Vec<Option<f64>>], rlabel: &str, clabel: &str) -> Result<(), PlotError> {
    let vals: Vec<f64> = values.iter().flatten().flatten().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = vals.iter().fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)));
    let (nc, nr) = (cols.len().max(1) as i32, rows.len().max(1) as i32);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(90)
        // A segmented range a..b has a segment per value of a..=b.
        .build_cartesian_2d((0..nc - 1).into_segmented(), (0..nr - 1).into_segmented())
        .map_err(draw_err)?;
    let name = |names: &[String], v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    // Rows top to bottom in the order given.
    let flip = |i: usize| nr - 1 - i as i32;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(clabel)
        .y_desc(rlabel)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|v| name(cols, v))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows.get((nr - 1 - *i) as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(draw_err)?;
    for (i, row) in values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let (x, y) = (j as i32, flip(i));
            let fill = match v {
                Some(v) if v.is_finite() => {
                    let u = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                    let g = (70.0 + 170.0 * u) as u8;
                    RGBColor(g, g, 255)
                }
                _ => RGBColor(220, 220, 220),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new([(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))], fill.filled())))
                .map_err(draw_err)?;
            if let Some(v) = v {
                let style = TextStyle::from((FONT, 16).into_font()).color(&BLACK).pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
                chart.draw_series(std::iter::once(Text::new(format!("{v:.4}"), (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)), style))).map_err(draw_err)?;
            }
        }
    }
    Ok(())
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

    /// Dark pixels (text and axes) in the rows [y0, y1) of an RGB image of width w.
    fn ink(px: &[u8], w: usize, y0: usize, y1: usize) -> usize {
        (y0 * w..y1 * w).filter(|&i| px[i * 3] < 100 && px[i * 3 + 1] < 100 && px[i * 3 + 2] < 100).count()
    }

    #[test]
    fn line_charts_draw_lines_text_and_legend_in_both_formats() {
        let s = vec![("lr 1e-3".to_string(), (0..50).map(|i| (i as f64, 5.0 - 0.05 * i as f64)).collect()), ("lr 3e-3".to_string(), (0..50).map(|i| (i as f64, 4.8 - 0.06 * i as f64)).collect())];
        let f = line_chart("train loss per run", "step", "loss (nats/token)", &s);
        let (info, px) = decode(&f.to_png().unwrap());
        assert_eq!((info.width, info.height, info.color_type), (900, 500, png::ColorType::Rgb));
        // The title's glyphs (a real font: many dark pixels in the caption band).
        assert!(ink(&px, 900, 0, 40) > 200, "no title drawn");
        // Both series' colours appear.
        let has = |c: RGBColor| (0..900 * 500).any(|i| px[i * 3] == c.0 && px[i * 3 + 1] == c.1 && px[i * 3 + 2] == c.2);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        let svg = f.to_svg().unwrap();
        for t in ["train loss per run", "loss (nats/token)", "lr 3e-3", "DejaVu Sans"] {
            assert!(svg.contains(t), "the SVG lacks {t:?}");
        }
    }

    #[test]
    fn charts_render_with_empty_and_nan_input() {
        let s = vec![("a".to_string(), vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)]), ("b".to_string(), vec![])];
        let f = line_chart("t", "step", "loss", &s);
        assert!(f.to_png().is_ok() && f.to_svg().unwrap().starts_with("<svg"));
        assert!(line_chart("t", "x", "y", &[]).to_png().is_ok());
        let hm = heatmap("h", &["1e-3".into(), "3e-3".into()], &["0".into(), "0.1".into()], &|i, j| (i + j != 2).then_some(1.0 + i as f64), "lr", "weight decay");
        let svg = hm.to_svg().unwrap();
        assert!(svg.contains("1.0000") && svg.contains("2.0000") && svg.contains("weight decay") && svg.contains("3e-3"), "{svg}");
        let (w, h) = hm.size();
        let (_, px) = decode(&hm.to_png().unwrap());
        assert!(ink(&px, w as usize, 0, h as usize) > 300);
    }
}
