//! A seeded procedural scene generator for image–text alignment: square RGB images of 1–3 flat
//! objects (shape × colour × size × position) on a dark background, each with captions that are
//! true of it in several phrasings ("a small red circle left of a large blue square", "a large
//! blue square right of a small red circle", "a red circle and a blue square").
//!
//! Generalisation, not memory: a seeded fifth of the (colour, shape) pairs is held out. Training
//! scenes never contain a held-out pair; every test scene contains at least one, so retrieval on
//! the test split scores compositions the model has never seen (each colour and each shape it
//! has). Objects are placed apart horizontally (their boxes never overlap), so "left of" is
//! always unambiguous and the captions stay true.

use fmlab_tensor::Rng;

use crate::images::Image;

pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const COLORS: [(&str, [u8; 3]); 6] = [("red", [220, 40, 40]), ("green", [40, 180, 60]), ("blue", [50, 90, 230]), ("yellow", [235, 215, 50]), ("purple", [150, 60, 200]), ("white", [240, 240, 240])];
pub const SIZES: [&str; 2] = ["small", "large"];
const BACKGROUND: [u8; 3] = [20, 20, 24];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// One object: indices into SHAPES, COLORS, SIZES, and its centre in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub shape: usize,
    pub color: usize,
    pub size: usize,
    pub x: usize,
    pub y: usize,
}

/// A scene, its image and its captions (the first is the canonical one).
#[derive(Clone, Debug)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub image: Image,
    pub captions: Vec<String>,
}

pub struct SceneGen {
    /// Image side in pixels (64: 8 × 8 patches of 8).
    pub size: usize,
    pub max_objects: usize,
    /// (colour, shape) pairs held out of training.
    pub held_out: Vec<(usize, usize)>,
}

impl SceneGen {
    /// Scenes of `size` × `size` pixels with 1..=`max_objects` objects; the held-out pairs are
    /// drawn from `seed` (every colour and every shape keeps at least one training pair).
    pub fn new(size: usize, max_objects: usize, seed: u64) -> SceneGen {
        assert!(size >= 32 && (1..=3).contains(&max_objects), "scenes: size {size} (≥ 32) with 1..=3 objects");
        let mut rng = Rng::new(seed ^ 0x5ce7e);
        let n_pairs = COLORS.len() * SHAPES.len();
        let mut held_out: Vec<(usize, usize)> = Vec::new();
        // One held-out shape per colour pair-up, a fifth of all pairs, rejecting any pick that
        // would leave a colour or a shape with no training pair.
        let mut tries = 0;
        while held_out.len() < n_pairs / 5 && tries < 1000 {
            tries += 1;
            let p = (rng.below(COLORS.len()), rng.below(SHAPES.len()));
            let color_left = SHAPES.len() - held_out.iter().filter(|h| h.0 == p.0).count();
            let shape_left = COLORS.len() - held_out.iter().filter(|h| h.1 == p.1).count();
            if !held_out.contains(&p) && color_left > 1 && shape_left > 1 {
                held_out.push(p);
            }
        }
        held_out.sort();
        SceneGen { size, max_objects, held_out }
    }

    fn radius(&self, size: usize) -> usize {
        if size == 0 { self.size / 10 } else { self.size / 6 }
    }

    fn is_held_out(&self, o: &Object) -> bool {
        self.held_out.contains(&(o.color, o.shape))
    }

    /// Scene `index` of `split`: the same (seed, split, index) always gives the same scene.
    pub fn scene(&self, split: Split, seed: u64, index: u64) -> Scene {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9).wrapping_add(index.wrapping_mul(2).wrapping_add((split == Split::Test) as u64)));
        loop {
            let n = 1 + rng.below(self.max_objects);
            let mut objects: Vec<Object> = Vec::with_capacity(n);
            for _ in 0..n {
                objects.push(Object { shape: rng.below(SHAPES.len()), color: rng.below(COLORS.len()), size: rng.below(SIZES.len()), x: 0, y: 0 });
            }
            let held = objects.iter().filter(|o| self.is_held_out(o)).count();
            let ok = match split {
                Split::Train => held == 0,
                Split::Test => held > 0,
            };
            // Two objects that look the same would make "the red circle" ambiguous.
            let distinct = (0..n).all(|i| (0..i).all(|j| (objects[i].shape, objects[i].color) != (objects[j].shape, objects[j].color)));
            if !ok || !distinct || !self.place(&mut objects, &mut rng) {
                continue;
            }
            let image = self.render(&objects);
            let captions = captions(&objects, &mut rng);
            return Scene { objects, image, captions };
        }
    }

    /// Positions left to right with clear gaps (no overlap, "left of" unambiguous); false if
    /// the objects do not fit side by side.
    fn place(&self, objs: &mut [Object], rng: &mut Rng) -> bool {
        let widths: Vec<usize> = objs.iter().map(|o| 2 * self.radius(o.size) + 1).collect();
        let gap = 3;
        let need: usize = widths.iter().sum::<usize>() + gap * (objs.len() + 1);
        if need > self.size {
            return false;
        }
        // Spread the spare width over the gaps at random.
        let mut spare = self.size - need;
        let mut x = gap;
        for (i, o) in objs.iter_mut().enumerate() {
            let extra = if i + 1 == widths.len() { rng.below(spare + 1) } else { rng.below(spare / 2 + 1) };
            spare -= extra;
            x += extra;
            let r = self.radius(o.size);
            o.x = x + r;
            o.y = r + gap + rng.below(self.size - 2 * r - 2 * gap);
            x += 2 * r + 1 + gap;
        }
        true
    }

    fn render(&self, objs: &[Object]) -> Image {
        let mut img = Image::new(self.size, self.size, 3);
        for y in 0..self.size {
            for x in 0..self.size {
                img.set(x, y, &BACKGROUND);
            }
        }
        for o in objs {
            let r = self.radius(o.size) as i64;
            let (cx, cy) = (o.x as i64, o.y as i64);
            for y in (cy - r).max(0)..=(cy + r).min(self.size as i64 - 1) {
                for x in (cx - r).max(0)..=(cx + r).min(self.size as i64 - 1) {
                    let (dx, dy) = (x - cx, y - cy);
                    let inside = match o.shape {
                        // Within r + 1/2 of the centre: no one-pixel spikes at the poles.
                        0 => dx * dx + dy * dy <= r * r + r,
                        1 => dx.abs() <= r * 4 / 5 && dy.abs() <= r * 4 / 5,
                        // Apex up: the half-width grows from 0 at the top to r at the bottom.
                        _ => dy >= -r && 2 * dx.abs() <= dy + r,
                    };
                    if inside {
                        img.set(x as usize, y as usize, &COLORS[o.color].1);
                    }
                }
            }
        }
        img
    }

    /// `n` scenes of `split`, indices 0..n.
    pub fn scenes(&self, split: Split, seed: u64, n: usize) -> Vec<Scene> {
        (0..n as u64).map(|i| self.scene(split, seed, i)).collect()
    }
}

fn noun(o: &Object, with_size: bool) -> String {
    let (c, s) = (COLORS[o.color].0, SHAPES[o.shape]);
    if with_size { format!("{} {c} {s}", SIZES[o.size]) } else { format!("{c} {s}") }
}

fn article(phrase: &str) -> String {
    format!("a {phrase}")
}

/// True captions of objects placed left to right (`objs` is in that order): the full one with
/// sizes, relations both ways round, and a plain list.
fn captions(objs: &[Object], rng: &mut Rng) -> Vec<String> {
    let full: Vec<String> = objs.iter().map(|o| article(&noun(o, true))).collect();
    let short: Vec<String> = objs.iter().map(|o| article(&noun(o, false))).collect();
    match objs.len() {
        1 => vec![full[0].clone(), short[0].clone(), format!("{} on its own", short[0])],
        2 => vec![format!("{} left of {}", full[0], full[1]), format!("{} right of {}", full[1], full[0]), format!("{} and {}", short[0], short[1]), format!("{} and {}", short[1], short[0])],
        _ => {
            // One relation between a random pair, named in both directions.
            let (i, j) = match rng.below(3) {
                0 => (0, 1),
                1 => (1, 2),
                _ => (0, 2),
            };
            vec![
                format!("{}, {} and {}", full[0], full[1], full[2]),
                format!("{} left of {}", short[i], short[j]),
                format!("{} right of {}", short[j], short[i]),
                format!("{}, {} and {}", short[2], short[0], short[1]),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_seeded_and_held_out_pairs_stay_out_of_training() {
        let g = SceneGen::new(64, 3, 7);
        assert_eq!(g.held_out.len(), COLORS.len() * SHAPES.len() / 5);
        for c in 0..COLORS.len() {
            assert!((0..SHAPES.len()).any(|s| !g.held_out.contains(&(c, s))), "colour {c} has a training pair");
        }
        for s in 0..SHAPES.len() {
            assert!((0..COLORS.len()).any(|c| !g.held_out.contains(&(c, s))), "shape {s} has a training pair");
        }
        let a = g.scene(Split::Train, 1, 5);
        let b = g.scene(Split::Train, 1, 5);
        assert_eq!(a.image, b.image);
        assert_eq!(a.captions, b.captions);
        assert_ne!(g.scene(Split::Train, 1, 6).image, a.image);
        for s in g.scenes(Split::Train, 1, 300) {
            assert!(s.objects.iter().all(|o| !g.held_out.contains(&(o.color, o.shape))), "{:?}", s.captions);
        }
        for s in g.scenes(Split::Test, 1, 300) {
            assert!(s.objects.iter().any(|o| g.held_out.contains(&(o.color, o.shape))), "{:?}", s.captions);
        }
    }

    #[test]
    fn images_show_what_the_captions_say() {
        let g = SceneGen::new(64, 3, 7);
        let mut seen_relations = 0;
        for s in g.scenes(Split::Train, 3, 200).iter().chain(g.scenes(Split::Test, 3, 100).iter()) {
            assert_eq!((s.image.width, s.image.height, s.image.channels), (64, 64, 3));
            // Each object's centre has its colour; objects go left to right with gaps.
            for o in &s.objects {
                assert_eq!(s.image.at(o.x, o.y), &COLORS[o.color].1, "{:?}", s.captions);
            }
            for w in s.objects.windows(2) {
                let (r0, r1) = (g.radius(w[0].size), g.radius(w[1].size));
                assert!(w[0].x + r0 < w[1].x - r1, "objects overlap or touch: {:?}", s.objects);
            }
            // Every caption names only objects in the scene; "X left of Y" has X's centre left of Y's.
            for c in &s.captions {
                if let Some((l, r)) = c.split_once(" left of ").or_else(|| c.split_once(" right of ").map(|(a, b)| (b, a))) {
                    let find = |p: &str| s.objects.iter().position(|o| p.ends_with(&noun(o, false))).unwrap_or_else(|| panic!("{p:?} names no object of {:?}", s.captions));
                    assert!(s.objects[find(l)].x < s.objects[find(r)].x, "{c}");
                    seen_relations += 1;
                }
            }
            assert!(s.captions.len() >= 3);
        }
        assert!(seen_relations > 100);
    }
}
