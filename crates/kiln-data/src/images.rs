//! Small labelled image sets for classifiers: the UCI handwritten digits built in (1,797 8×8
//! grey-scale images, 10 classes, CC BY 4.0), any image set in a safetensors file of the same
//! layout, stratified splits, and the transformations continual-learning benchmarks build task
//! sequences from (rotations, a fixed pixel permutation, inversion).
//!
//! ```
//! use kiln_data::images::{ImageSet, ImageTransform};
//!
//! let digits = ImageSet::digits()?;
//! assert_eq!((digits.len(), digits.classes, digits.height, digits.width), (1797, 10, 8, 8));
//! assert_eq!(digits.licence(), Some("CC BY 4.0"));
//! let (train, test) = digits.split(0.2, 0); // stratified by class
//! assert_eq!(train.len() + test.len(), 1797);
//! // "permuted digits": every image's pixels shuffled by one fixed permutation
//! let permuted = digits.transformed(ImageTransform::Permute { seed: 1 })?;
//! assert_eq!(permuted.label(5), digits.label(5));
//! # Ok::<(), kiln_data::Error>(())
//! ```
//!
//! **The file format** (`ImageSet::read`): safetensors with `images` (`U8` counts scaled by the
//! metadata's `max_value`, default 255, or `F32` in [0, 1]) of shape `[N, H, W]` or
//! `[N, C, H, W]`, and `labels` (`U8`, `U32` or `I64`) of shape `[N]`; metadata `classes`
//! (default: the largest label + 1), `name`, `licence`, `source`. `crates/kiln-data/data/
//! make_digits.py` writes the built-in digits this way from scikit-learn's bundled copy.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_checkpoint::{Dtype, Header};

use crate::error::{Error, Result, io_err};

const DIGITS: &[u8] = include_bytes!("../data/digits.safetensors");

/// A transformation applied to every image of a set (the same for all: one task of a sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageTransform {
    /// Rotate by `k` quarter turns counter-clockwise (square images only).
    Rotate90 {
        /// Quarter turns (taken mod 4).
        k: u8,
    },
    /// Shuffle the pixel positions by one permutation drawn from `seed` (the same for every
    /// image and channel: "permuted MNIST"). Destroys spatial structure; a fully connected
    /// network learns it as easily as the original.
    Permute {
        /// Seed of the permutation.
        seed: u64,
    },
    /// `1 − x` (white on black becomes black on white).
    Invert,
}

/// Labelled images with pixels in [0, 1], row-major `[N, C, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// The set's name (file metadata, or the file name).
    pub name: String,
    /// Channels per image.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Classes (labels are below this).
    pub classes: usize,
    /// Pixels, `len() × channels × height × width`, in [0, 1].
    pub pixels: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// The file's metadata (licence, source…).
    pub metadata: BTreeMap<String, String>,
}

fn bad(source: &str, message: String) -> Error {
    Error::Config {
        message: format!("image set {source}: {message}"),
    }
}

impl ImageSet {
    /// The UCI ML handwritten digits as scikit-learn bundles them (E. Alpaydin, C. Kaynak 1998;
    /// CC BY 4.0; <https://doi.org/10.24432/C50P49>): 1,797 grey-scale 8×8 images of the digits
    /// 0–9, pixel counts 0–16 scaled to [0, 1]. Built into the crate (117 KB).
    ///
    /// # Errors
    /// None in practice (the embedded file is checked like any other).
    pub fn digits() -> Result<Self> {
        Self::from_bytes(DIGITS, "digits (built in)")
    }

    /// Reads an image set from a safetensors file (format in the [module docs](self)).
    ///
    /// # Errors
    /// I/O errors; a file that is not safetensors or does not have the layout above, naming
    /// what is wrong.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let mut set = Self::from_bytes(&bytes, &path.display().to_string())?;
        if !set.metadata.contains_key("name") {
            set.name = path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        }
        Ok(set)
    }

    /// Parses an image set from the bytes of a safetensors file; `source` names it in errors.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let header = Header::parse(bytes, source)?;
        let data = &bytes[header.data_start..];
        let find = |name: &str| {
            header
                .tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    bad(
                        source,
                        format!("no `{name}` tensor (an image set has `images` and `labels`)"),
                    )
                })
        };
        let (images, labels) = (find("images")?, find("labels")?);
        let (n, channels, height, width) = match images.shape[..] {
            [n, h, w] => (n, 1, h, w),
            [n, c, h, w] => (n, c, h, w),
            _ => {
                return Err(bad(
                    source,
                    format!(
                        "`images` has shape {:?}; expected [N, H, W] or [N, C, H, W]",
                        images.shape
                    ),
                ));
            }
        };
        if labels.shape != [n] {
            return Err(bad(
                source,
                format!("`labels` has shape {:?}; expected [{n}]", labels.shape),
            ));
        }
        let raw = &data[images.data_offsets.0..images.data_offsets.1];
        let pixels: Vec<f32> = match images.dtype {
            Dtype::U8 => {
                let max: f32 = match header.metadata.get("max_value") {
                    None => 255.0,
                    Some(v) => v.parse().ok().filter(|m: &f32| *m > 0.0).ok_or_else(|| {
                        bad(
                            source,
                            format!("metadata max_value `{v}` is not a positive number"),
                        )
                    })?,
                };
                raw.iter().map(|&b| f32::from(b) / max).collect()
            }
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => {
                return Err(bad(
                    source,
                    format!("`images` is {other}; expected U8 or F32"),
                ));
            }
        };
        if let Some(i) = pixels.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(bad(
                source,
                format!(
                    "pixel {i} is {} after scaling, outside [0, 1] (check max_value)",
                    pixels[i]
                ),
            ));
        }
        let raw = &data[labels.data_offsets.0..labels.data_offsets.1];
        let labels: Vec<u32> = match labels.dtype {
            Dtype::U8 => raw.iter().map(|&b| u32::from(b)).collect(),
            Dtype::U32 => raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| {
                    let v = i64::from_le_bytes(c.try_into().expect("8 bytes"));
                    u32::try_from(v)
                        .map_err(|_| bad(source, format!("label {v} is negative or too large")))
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(bad(
                    source,
                    format!("`labels` is {other}; expected U8, U32 or I64"),
                ));
            }
        };
        let largest = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let classes = match header.metadata.get("classes") {
            None => largest,
            Some(v) => v.parse().ok().filter(|&c: &usize| c >= largest).ok_or_else(|| {
                bad(
                    source,
                    format!("metadata classes `{v}` is not a number of at least {largest} (the largest label + 1)"),
                )
            })?,
        };
        if n == 0 {
            return Err(bad(source, "no images".into()));
        }
        Ok(Self {
            name: header
                .metadata
                .get("name")
                .cloned()
                .unwrap_or_else(|| source.to_owned()),
            channels,
            height,
            width,
            classes,
            pixels,
            labels,
            metadata: header.metadata,
        })
    }

    /// Images in the set.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image (`channels × height × width`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i`'s pixels (`[C, H, W]`).
    pub fn image(&self, i: usize) -> &[f32] {
        let k = self.image_len();
        &self.pixels[i * k..(i + 1) * k]
    }

    /// Image `i`'s label.
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    /// The licence the file names, if any.
    pub fn licence(&self) -> Option<&str> {
        self.metadata.get("licence").map(String::as_str)
    }

    /// A stratified split: per class, a seeded shuffle of its images, the first
    /// `round(test_fraction × count)` to the test side. Returns (train, test) indices, each
    /// ascending.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, &l) in self.labels.iter().enumerate() {
            by_class.entry(l).or_default().push(i);
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (class, idx) in by_class {
            let order = crate::packing::permutation(idx.len(), seed, u64::from(class));
            let k = (test_fraction.clamp(0.0, 1.0) * idx.len() as f64).round() as usize;
            for (j, &o) in order.iter().enumerate() {
                (if j < k { &mut test } else { &mut train }).push(idx[o as usize]);
            }
        }
        train.sort_unstable();
        test.sort_unstable();
        (train, test)
    }

    /// The images at `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        Self {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone_header()
        }
    }

    fn clone_header(&self) -> Self {
        Self {
            name: self.name.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
            pixels: Vec::new(),
            labels: Vec::new(),
            metadata: self.metadata.clone(),
        }
    }

    /// Every image transformed by `t`; the labels unchanged.
    ///
    /// # Errors
    /// [`Error::Config`] for `Rotate90` with odd k on non-square images.
    pub fn transformed(&self, t: ImageTransform) -> Result<Self> {
        let (c, h, w) = (self.channels, self.height, self.width);
        let plane = h * w;
        // where each output position of a plane reads from
        let source: Vec<usize> = match t {
            ImageTransform::Invert => (0..plane).collect(),
            ImageTransform::Permute { seed } => crate::packing::permutation(plane, seed, 0)
                .into_iter()
                .map(|p| p as usize)
                .collect(),
            ImageTransform::Rotate90 { k } => {
                let k = k % 4;
                if k % 2 == 1 && h != w {
                    return Err(Error::Config {
                        message: format!(
                            "image set {}: a quarter turn needs square images, these are {h}×{w}",
                            self.name
                        ),
                    });
                }
                (0..plane)
                    .map(|o| {
                        let (r, col) = (o / w, o % w);
                        // counter-clockwise: output (r, c) reads input (c, n−1−r), per turn
                        let (mut sr, mut sc) = (r, col);
                        for _ in 0..k {
                            (sr, sc) = (sc, h - 1 - sr);
                        }
                        sr * w + sc
                    })
                    .collect()
            }
        };
        let invert = t == ImageTransform::Invert;
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for img in self.pixels.chunks_exact(c * plane) {
            for ch in img.chunks_exact(plane) {
                pixels.extend(
                    source
                        .iter()
                        .map(|&s| if invert { 1.0 - ch[s] } else { ch[s] }),
                );
            }
        }
        let mut out = self.clone_header();
        out.pixels = pixels;
        out.labels = self.labels.clone();
        out.name = format!("{} ({t:?})", self.name);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_the_uci_set() {
        let d = ImageSet::digits().unwrap();
        assert_eq!(d.len(), 1797);
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        // sklearn's documented class counts
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert!(d.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        // the first image is a 0: a ring, its centre column empty in the middle rows
        assert_eq!(d.label(0), 0);
        let img = d.image(0);
        assert!(
            img[3 * 8 + 3] < 0.1 && img[3 * 8 + 4] < 0.1 && img[3 * 8 + 2] > 0.5,
            "{img:?}"
        );
    }

    #[test]
    fn the_split_is_stratified_and_seeded() {
        let d = ImageSet::digits().unwrap();
        let (train, test) = d.split(0.2, 3);
        assert_eq!(train.len() + test.len(), d.len());
        assert!(train.iter().all(|i| !test.contains(i)));
        for c in 0..10 {
            let n = d.labels.iter().filter(|&&l| l == c).count();
            let t = test.iter().filter(|&&i| d.label(i) == c).count();
            assert_eq!(t, (0.2 * n as f64).round() as usize);
        }
        assert_eq!(d.split(0.2, 3), (train.clone(), test));
        assert_ne!(d.split(0.2, 4).0, train);
    }

    #[test]
    fn transformations_move_pixels_as_named() {
        let d = ImageSet::digits().unwrap().select(&[0, 1, 2]);
        let at = |s: &ImageSet, i: usize, r: usize, c: usize| s.image(i)[r * 8 + c];
        let r1 = d.transformed(ImageTransform::Rotate90 { k: 1 }).unwrap();
        // counter-clockwise: the top-right corner goes to the top-left
        for (r, c) in [(0, 7), (2, 5), (7, 0)] {
            assert_eq!(at(&r1, 1, 7 - c, r), at(&d, 1, r, c));
        }
        let r4 = d.transformed(ImageTransform::Rotate90 { k: 4 }).unwrap();
        assert_eq!(r4.pixels, d.pixels);
        let twice = r1
            .transformed(ImageTransform::Rotate90 { k: 1 })
            .unwrap()
            .transformed(ImageTransform::Rotate90 { k: 2 })
            .unwrap();
        assert_eq!(twice.pixels, d.pixels);
        let p = d.transformed(ImageTransform::Permute { seed: 9 }).unwrap();
        let mut a = p.image(2).to_vec();
        let mut b = d.image(2).to_vec();
        a.sort_by(f32::total_cmp);
        b.sort_by(f32::total_cmp);
        assert_eq!(a, b, "a permutation keeps the values");
        assert_ne!(p.image(2), d.image(2));
        let inv = d.transformed(ImageTransform::Invert).unwrap();
        assert_eq!(inv.image(0)[10], 1.0 - d.image(0)[10]);
        assert_eq!(inv.labels, d.labels);
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(ImageSet::read(&path).is_err());
        let e = ImageSet::read(dir.path().join("missing.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        // a file without labels
        let bytes = safetensors_u8("images", &[2, 2, 2], &[0; 8]);
        std::fs::write(&path, bytes).unwrap();
        let e = ImageSet::read(&path).unwrap_err().to_string();
        assert!(e.contains("no `labels` tensor"), "{e}");
    }

    fn safetensors_u8(name: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            r#"{{"{name}":{{"dtype":"U8","shape":{shape:?},"data_offsets":[0,{}]}}}}"#,
            data.len()
        )
        .into_bytes();
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }
}
