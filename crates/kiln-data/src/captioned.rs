//! A generated captioned image set for text-to-image training offline: one coloured shape per
//! image — a circle, square or triangle, in one of six colours, in one of four quadrants, with
//! a little jitter of size and place — captioned "a red circle at the top left".
//!
//! What a sample shows can be read back from its pixels ([`describe`]): the colour nearest the
//! mean of the foreground, the quadrant of its centroid, and the shape from how much of its
//! bounding box it fills (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2). That makes a generator's
//! adherence to its prompt a number, not an impression; [`describe`] reads the generated set's
//! own images back correctly (tested), so its errors on samples are the model's.
//!
//! ```
//! use kiln_data::captioned::{CaptionedShapes, describe};
//! let set = CaptionedShapes::generate(24, 32, 1)?;
//! assert_eq!(set.len(), 24);
//! assert!(set.captions[0].starts_with("a "));
//! // the reader agrees with the caption
//! let seen = describe(&set.images[0], 32).unwrap();
//! assert_eq!(seen, set.attributes[0]);
//! assert_eq!(seen.caption(), set.captions[0]);
//! # Ok::<(), kiln_data::Error>(())
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The colours, with their RGB values in [0, 1].
pub const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.9, 0.1, 0.1]),
    ("green", [0.1, 0.8, 0.2]),
    ("blue", [0.15, 0.25, 0.95]),
    ("yellow", [0.95, 0.9, 0.1]),
    ("purple", [0.6, 0.15, 0.8]),
    ("white", [0.95, 0.95, 0.95]),
];
/// The shapes.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// The quadrants.
pub const PLACES: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];

/// The background colour (dark grey).
const BACKGROUND: [f32; 3] = [0.1, 0.1, 0.1];

/// What one image shows (indices into [`COLOURS`], [`SHAPES`], [`PLACES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Colour index.
    pub colour: usize,
    /// Shape index.
    pub shape: usize,
    /// Quadrant index.
    pub place: usize,
}

impl Attributes {
    /// "a red circle at the top left".
    pub fn caption(&self) -> String {
        format!(
            "a {} {} at the {}",
            COLOURS[self.colour].0, SHAPES[self.shape], PLACES[self.place]
        )
    }

    /// Every combination, in a fixed order (72).
    pub fn all() -> Vec<Self> {
        let mut v = Vec::new();
        for colour in 0..COLOURS.len() {
            for shape in 0..SHAPES.len() {
                for place in 0..PLACES.len() {
                    v.push(Self {
                        colour,
                        shape,
                        place,
                    });
                }
            }
        }
        v
    }
}

/// Generated images (`[3, H, W]` row-major RGB in [0, 1]) with captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionedShapes {
    /// Side in pixels.
    pub size: usize,
    /// The images.
    pub images: Vec<Vec<f32>>,
    /// Their captions.
    pub captions: Vec<String>,
    /// What each shows.
    pub attributes: Vec<Attributes>,
}

/// Renders one image of `a` with a shape of half-size `r` (pixels) centred at `(cy, cx)`.
pub fn render(a: Attributes, size: usize, r: f32, cy: f32, cx: f32) -> Vec<f32> {
    let rgb = COLOURS[a.colour].1;
    let mut img = vec![0.0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            // pixel centre relative to the shape's centre
            let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
            let inside = match a.shape {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r && dy.abs() <= r,
                // apex up: the half-width grows linearly from the top edge to the base
                _ => dy >= -r && dy <= r && dx.abs() <= (dy + r) / 2.0,
            };
            let c = if inside { rgb } else { BACKGROUND };
            for ch in 0..3 {
                img[(ch * size + y) * size + x] = c[ch];
            }
        }
    }
    img
}

impl CaptionedShapes {
    /// `n` images of `size`×`size` pixels (16 or more), attributes cycling through every
    /// combination in a seeded order, size and place jittered.
    ///
    /// # Errors
    /// [`Error::Config`] for `n` = 0 or `size` < 16.
    pub fn generate(n: usize, size: usize, seed: u64) -> Result<Self> {
        if n == 0 || size < 16 {
            return Err(Error::Config {
                message: format!(
                    "captioned shapes: {n} images of {size}×{size} pixels; give at least 1 image of at least 16×16"
                ),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let all = Attributes::all();
        let (mut images, mut captions, mut attributes) = (Vec::new(), Vec::new(), Vec::new());
        let s = size as f32;
        for i in 0..n {
            let a = all[(i + rng.random_range(0..all.len())) % all.len()];
            let r = s * rng.random_range(0.16f32..0.22);
            let centre = |lower: bool, rng: &mut ChaCha8Rng| {
                let base = if lower { 0.72 * s } else { 0.28 * s };
                base + rng.random_range(-0.04f32..0.04) * s
            };
            let cy = centre(a.place >= 2, &mut rng);
            let cx = centre(a.place % 2 == 1, &mut rng);
            images.push(render(a, size, r, cy, cx));
            captions.push(a.caption());
            attributes.push(a);
        }
        Ok(Self {
            size,
            images,
            captions,
            attributes,
        })
    }

    /// Images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// What an image `[3, size, size]` in [0, 1] shows, read from its pixels, or `None` when no
/// pixel stands out from the background. Foreground: pixels farther than 0.25 (RGB distance)
/// from the background colour; colour: the palette entry nearest their mean; place: the
/// quadrant of their centroid; shape: a square fills more than 0.95 of its bounding box, a
/// triangle (apex up) has under 0.7 times as many pixels in the top half of its box as in the
/// bottom half, a circle is the rest. Shapes are read reliably from 32 pixels up (at 16 a
/// circle of radius 3 is nearly a square); colour and place from 16.
pub fn describe(image: &[f32], size: usize) -> Option<Attributes> {
    let hw = size * size;
    if image.len() != 3 * hw {
        return None;
    }
    let (mut n, mut sum, mut sy, mut sx) = (0usize, [0.0f32; 3], 0.0f32, 0.0f32);
    let (mut y0, mut y1, mut x0, mut x1) = (size, 0, size, 0);
    for y in 0..size {
        for x in 0..size {
            let p = [
                image[y * size + x],
                image[hw + y * size + x],
                image[2 * hw + y * size + x],
            ];
            let d: f32 = (0..3).map(|c| (p[c] - BACKGROUND[c]).powi(2)).sum();
            if d.sqrt() > 0.25 {
                n += 1;
                for c in 0..3 {
                    sum[c] += p[c];
                }
                sy += y as f32 + 0.5;
                sx += x as f32 + 0.5;
                (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
            }
        }
    }
    if n == 0 {
        return None;
    }
    let mean = sum.map(|v| v / n as f32);
    let colour = (0..COLOURS.len())
        .min_by(|&a, &b| {
            let d = |k: usize| -> f32 { (0..3).map(|c| (COLOURS[k].1[c] - mean[c]).powi(2)).sum() };
            d(a).total_cmp(&d(b))
        })
        .unwrap_or(0);
    let half = size as f32 / 2.0;
    let place = usize::from(sy / n as f32 >= half) * 2 + usize::from(sx / n as f32 >= half);
    let boxed = ((y1 - y0 + 1) * (x1 - x0 + 1)) as f32;
    let fill = n as f32 / boxed;
    let h = (y1 - y0 + 1) as f32;
    let mut top = 0usize;
    for y in y0..=y1 {
        if ((y - y0) as f32) < h / 2.0 {
            for x in x0..=x1 {
                let d: f32 = (0..3)
                    .map(|c| (image[c * hw + y * size + x] - BACKGROUND[c]).powi(2))
                    .sum();
                top += usize::from(d.sqrt() > 0.25);
            }
        }
    }
    let bottom = (n - top).max(1);
    let shape = if fill > 0.95 {
        1
    } else if (top as f32) < 0.7 * bottom as f32 {
        2
    } else {
        0
    };
    Some(Attributes {
        colour,
        shape,
        place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_image_is_read_back_as_its_caption() {
        for size in [16, 32] {
            let set = CaptionedShapes::generate(500, size, 3).unwrap();
            for i in 0..set.len() {
                let mut seen = describe(&set.images[i], size).unwrap();
                if size < 32 {
                    // colour and place only
                    seen.shape = set.attributes[i].shape;
                }
                assert_eq!(
                    seen, set.attributes[i],
                    "{size}px image {i}: {}",
                    set.captions[i]
                );
            }
            // every combination appears
            let mut seen = set.attributes.clone();
            seen.sort_by_key(|a| (a.colour, a.shape, a.place));
            seen.dedup();
            assert_eq!(seen.len(), 72);
        }
        assert_eq!(
            CaptionedShapes::generate(10, 16, 9).unwrap(),
            CaptionedShapes::generate(10, 16, 9).unwrap()
        );
        assert!(CaptionedShapes::generate(10, 8, 9).is_err());
        // a blank image shows nothing
        let blank: Vec<f32> = (0..3 * 256).map(|k| BACKGROUND[k / 256]).collect();
        assert_eq!(describe(&blank, 16), None);
    }
}
