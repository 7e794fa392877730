//! Images as bytes (height × width × channels, u8), and the readers of the image datasets:
//! Fashion-MNIST / MNIST in IDX (`*-images-idx3-ubyte`, `*-labels-idx1-ubyte`). Errors name the
//! file and what is wrong with it; nothing here panics on a file's contents.

use std::path::Path;

use crate::{ferr, DataError};

/// An 8-bit image, rows top to bottom, channels interleaved (1: gray, 3: RGB).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    pub fn new(width: usize, height: usize, channels: usize) -> Image {
        Image { width, height, channels, pixels: vec![0; width * height * channels] }
    }

    /// The pixel at (x, y): `channels` bytes.
    pub fn at(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.width + x) * self.channels;
        &self.pixels[i..i + self.channels]
    }

    pub fn set(&mut self, x: usize, y: usize, px: &[u8]) {
        let i = (y * self.width + x) * self.channels;
        self.pixels[i..i + self.channels].copy_from_slice(px);
    }
}

impl Image {
    /// Writes an 8-bit gray or RGB PNG (atomically).
    pub fn save_png(&self, path: &Path) -> Result<(), DataError> {
        let color = match self.channels {
            1 => png::ColorType::Grayscale,
            3 => png::ColorType::Rgb,
            c => return Err(ferr(path, format!("an image of {c} channels (PNG output takes 1 or 3)"))),
        };
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().and_then(|mut w| w.write_image_data(&self.pixels)).map_err(|e| ferr(path, format!("encoding: {e}")))?;
        }
        fmlab_fs::write_atomic(path, &out).map_err(|e| ferr(path, e))
    }

    /// Reads an 8-bit gray, gray+alpha, RGB or RGBA PNG (alpha dropped; palettes expanded).
    pub fn load_png(path: &Path) -> Result<Image, DataError> {
        let f = std::fs::File::open(path).map_err(|e| ferr(path, e))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(f));
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut r = dec.read_info().map_err(|e| ferr(path, format!("not a readable PNG ({e})")))?;
        let (w, h) = (r.info().width as usize, r.info().height as usize);
        if w == 0 || h == 0 || w * h > 1 << 26 {
            return Err(ferr(path, format!("a {w} × {h} image (expected 1 to 2^26 pixels)")));
        }
        let mut buf = vec![0u8; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).map_err(|e| ferr(path, format!("corrupt PNG data ({e})")))?;
        let buf = &buf[..info.buffer_size()];
        let (channels, keep): (usize, &[usize]) = match info.color_type {
            png::ColorType::Grayscale => (1, &[0]),
            png::ColorType::GrayscaleAlpha => (2, &[0]),
            png::ColorType::Rgb => (3, &[0, 1, 2]),
            png::ColorType::Rgba => (4, &[0, 1, 2]),
            c => return Err(ferr(path, format!("PNG colour type {c:?} after expansion"))),
        };
        let pixels: Vec<u8> = buf.chunks_exact(channels).flat_map(|p| keep.iter().map(move |&i| p[i])).collect();
        Ok(Image { width: w, height: h, channels: keep.len(), pixels })
    }
}

/// The ten Fashion-MNIST classes, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// The header of an IDX file of unsigned bytes with `want_dims` dimensions: the sizes, after
/// checking the magic and that the body holds exactly their product.
fn idx_dims(path: &Path, b: &[u8], want_dims: u8) -> Result<Vec<usize>, DataError> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(ferr(path, "not an IDX file (the magic's first two bytes are not 0)"));
    }
    if b[2] != 0x08 {
        return Err(ferr(path, format!("IDX element type 0x{:02x}; only unsigned bytes (0x08) are read", b[2])));
    }
    if b[3] != want_dims {
        return Err(ferr(path, format!("an IDX file of {} dimensions; expected {want_dims} ({})", b[3], if want_dims == 3 { "images" } else { "labels" })));
    }
    let start = 4 + 4 * want_dims as usize;
    if b.len() < start {
        return Err(ferr(path, format!("truncated IDX header ({} bytes)", b.len())));
    }
    let dims: Vec<usize> = (0..want_dims as usize).map(|i| u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize).collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(b.len() - start) {
        return Err(ferr(path, format!("dimensions {dims:?} need {} bytes of data; the file has {} (truncated or corrupt)", n.map_or("too many".to_string(), |n| n.to_string()), b.len() - start)));
    }
    Ok(dims)
}

/// The IDX encoding of unsigned bytes with dimensions `dims` (fixtures and tests).
pub fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(body);
    b
}

/// The images of an IDX images file (gray, `rows × cols`).
pub fn read_idx_images(path: &Path) -> Result<Vec<Image>, DataError> {
    let b = std::fs::read(path).map_err(|e| ferr(path, e))?;
    let dims = idx_dims(path, &b, 3)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if n > 0 && (h == 0 || w == 0) {
        return Err(ferr(path, format!("images of {h} × {w} pixels")));
    }
    Ok(b[16..].chunks_exact((h * w).max(1)).take(n).map(|p| Image { width: w, height: h, channels: 1, pixels: p.to_vec() }).collect())
}

/// The labels of an IDX labels file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let b = std::fs::read(path).map_err(|e| ferr(path, e))?;
    idx_dims(path, &b, 1)?;
    Ok(b[8..].to_vec())
}

/// Images and labels of one split, checked to match in number.
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<(Vec<Image>, Vec<u8>), DataError> {
    let (x, y) = (read_idx_images(images)?, read_idx_labels(labels)?);
    if x.len() != y.len() {
        return Err(ferr(labels, format!("{} labels for the {} images of {}", y.len(), x.len(), images.display())));
    }
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_files_read_and_damage_is_named() {
        let d = std::env::temp_dir().join(format!("fmlab-idx-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (pi, pl) = (d.join("t-images-idx3-ubyte"), d.join("t-labels-idx1-ubyte"));
        let px: Vec<u8> = (0..2 * 3 * 2).map(|i| i as u8).collect();
        std::fs::write(&pi, idx_bytes(&[2, 3, 2], &px)).unwrap();
        std::fs::write(&pl, idx_bytes(&[2], &[7, 9])).unwrap();
        let (x, y) = read_idx_pair(&pi, &pl).unwrap();
        assert_eq!((x.len(), x[1].width, x[1].height, x[1].at(1, 2)), (2, 2, 3, &[11u8][..]));
        assert_eq!(y, [7, 9]);
        // A wrong magic, a short body, a labels file for the images reader, a count mismatch.
        std::fs::write(&pi, b"\x1f\x8b\x08\x00gzip").unwrap();
        assert!(read_idx_images(&pi).unwrap_err().to_string().contains("not an IDX file"));
        std::fs::write(&pi, idx_bytes(&[2, 3, 2], &px[..7])).unwrap();
        let e = read_idx_images(&pi).unwrap_err().to_string();
        assert!(e.contains("t-images-idx3-ubyte") && e.contains("need 12 bytes") && e.contains("has 7"), "{e}");
        std::fs::write(&pi, idx_bytes(&[2], &[1, 2])).unwrap();
        assert!(read_idx_images(&pi).unwrap_err().to_string().contains("expected 3 (images)"));
        std::fs::write(&pi, idx_bytes(&[3, 3, 2], &[0; 18])).unwrap();
        assert!(read_idx_pair(&pi, &pl).unwrap_err().to_string().contains("2 labels for the 3 images"));
        // Fuzzed: errors, never panics.
        let good = idx_bytes(&[2, 3, 2], &px);
        for b in fmlab_fs::mutations(&good, 3, 300) {
            std::fs::write(&pi, &b).unwrap();
            if let Err(e) = read_idx_images(&pi) {
                assert!(e.to_string().contains("t-images-idx3-ubyte"), "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn png_round_trips_and_damage_is_named() {
        let d = std::env::temp_dir().join(format!("fmlab-png-{}", std::process::id()));
        let p = d.join("a.png");
        let mut img = Image::new(5, 3, 3);
        for y in 0..3 {
            for x in 0..5 {
                img.set(x, y, &[(x * 50) as u8, (y * 80) as u8, 7]);
            }
        }
        img.save_png(&p).unwrap();
        assert_eq!(Image::load_png(&p).unwrap(), img);
        let good = std::fs::read(&p).unwrap();
        for b in fmlab_fs::mutations(&good, 9, 300) {
            std::fs::write(&p, &b).unwrap();
            if let Err(e) = Image::load_png(&p) {
                assert!(e.to_string().contains("a.png"), "{e}");
            }
        }
        std::fs::write(&p, b"not a png").unwrap();
        assert!(Image::load_png(&p).unwrap_err().to_string().contains("not a readable PNG"));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The real Fashion-MNIST test split (scripts/test.sh fetches it).
    #[test]
    fn fashion_mnist_test_split_reads() {
        let dir = std::env::var_os("FMLAB_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/fmlab")).join("fashion-mnist");
        let (pi, pl) = (dir.join("t10k-images-idx3-ubyte"), dir.join("t10k-labels-idx1-ubyte"));
        let (x, y) = read_idx_pair(&pi, &pl).unwrap();
        assert_eq!((x.len(), x[0].width, x[0].height), (10_000, 28, 28));
        let mut per = [0usize; 10];
        y.iter().for_each(|&l| per[l as usize] += 1);
        assert_eq!(per, [1000; 10], "the test split is balanced");
    }
}
