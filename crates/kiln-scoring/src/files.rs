//! Score files: one directory per run, `NAME.scores/`, holding `scores.csv` (one row per example
//! id, one column per score) and `manifest.json` (format, number of examples, what the scores
//! were measured on, the data set's order, the recipe and the seed).
//!
//! CSV with a JSON manifest rather than Parquet: pandas, polars, R, DuckDB and a spreadsheet read
//! it without extra libraries, the table is small (one row of ~30 numbers per example), and
//! kiln-scoring stays free of arrow's dependency tree. Values are written with Rust's shortest
//! round-trip formatting, so reading a file back gives the same f64 bits; an empty cell is a
//! missing value (a variance from one measurement).
//!
//! ```
//! use kiln_scoring::files::{Manifest, ScoreTable};
//! use kiln_scoring::ScoreTracker;
//!
//! let mut tracker = ScoreTracker::new(2);
//! tracker.observe(&[0, 1], &[2.0f32, 0.0, 0.5, 1.5], 2, &[0, 0])?;
//! let dir = std::env::temp_dir().join(format!("kiln-doc-{}.scores", std::process::id()));
//! let table = ScoreTable::from_tracker(&tracker, Manifest::new("digits", 7));
//! table.save(&dir, true)?;
//! let back = ScoreTable::load(&dir)?;
//! assert_eq!(back.column("loss_mean")?, table.column("loss_mean")?);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), kiln_scoring::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pointwise::SCORES;
use crate::tracker::ScoreTracker;

/// The format tag of `manifest.json`.
pub const FORMAT: &str = "kiln-scores/1";

/// What a score table describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The data set's name.
    pub dataset: String,
    /// How example ids map to the data set (e.g. "index into the UCI digits in scikit-learn's
    /// order, training split of split(0.25, seed 0)").
    pub order: String,
    /// What the scores were measured on: `minibatch` (each presentation during training) or
    /// `checkpoints` (a pass over the data at each checkpoint or epoch).
    pub measured_on: String,
    /// The training recipe (architecture, optimiser, schedule, …), free-form.
    pub recipe: serde_json::Value,
    /// The run's seed.
    pub seed: u64,
    /// Examples (rows).
    pub examples: usize,
    /// Anything else, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// A manifest for `dataset` and a run seeded with `seed` (scores measured on minibatches;
    /// set the other fields as needed).
    pub fn new(dataset: &str, seed: u64) -> Self {
        Self {
            format: FORMAT.into(),
            dataset: dataset.into(),
            order: String::new(),
            measured_on: "minibatch".into(),
            recipe: serde_json::Value::Null,
            seed,
            examples: 0,
            extra: BTreeMap::new(),
        }
    }
}

/// One run's scores: a column per score, a row per example id.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreTable {
    /// Its manifest.
    pub manifest: Manifest,
    /// Column names (the first is `example`).
    pub columns: Vec<String>,
    /// Rows, by example id; `None` for a missing value.
    pub rows: Vec<Vec<Option<f64>>>,
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl ScoreTable {
    /// The table of a tracker: for every score its mean and unbiased variance (`{score}_mean`,
    /// `{score}_var`), the measurement count, forgetting statistics, AUM and dataset cartography.
    pub fn from_tracker(tracker: &ScoreTracker, manifest: Manifest) -> Self {
        let mut columns = vec!["example".to_owned()];
        for s in SCORES {
            columns.push(format!("{s}_mean"));
            columns.push(format!("{s}_var"));
        }
        for c in [
            "count",
            "countforget",
            "countforget_from_one",
            "unforgettable",
            "firstlearn",
            "firstunforgettable",
            "firstforget",
            "firstunlearnable",
            "aum",
            "confidence",
            "variability",
            "correctness",
        ] {
            columns.push(c.to_owned());
        }
        let rows = tracker
            .examples()
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut row = vec![Some(i as f64)];
                for w in &e.scores {
                    row.push(w.mean());
                    row.push(w.variance());
                }
                let f = &e.forgetting;
                let n = |v: usize| Some(v as f64);
                row.extend([
                    n(e.scores[0].count() as usize),
                    n(f.count(true)),
                    n(f.count(false)),
                    n(usize::from(f.unforgettable(true))),
                    n(f.first_learn()),
                    n(f.first_unforgettable()),
                    n(f.first_forget()),
                    n(f.first_unlearnable()),
                    e.aum(),
                ]);
                let c = e.cartography();
                row.extend([c.map(|c| c.0), c.map(|c| c.1), c.map(|c| c.2)]);
                row
            })
            .collect();
        Self {
            manifest: Manifest {
                examples: tracker.len(),
                ..manifest
            },
            columns,
            rows,
        }
    }

    /// The values of column `name`, by example id.
    ///
    /// # Errors
    /// [`Error::Shape`] naming the columns that exist.
    pub fn column(&self, name: &str) -> Result<Vec<Option<f64>>> {
        let j = self
            .columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::Shape {
                what: format!("score `{name}`"),
                message: format!("no such column; the table has {}", self.columns.join(", ")),
            })?;
        Ok(self.rows.iter().map(|r| r[j]).collect())
    }

    /// Column `name` with every value present (a score to rank or correlate).
    ///
    /// # Errors
    /// [`Error::Shape`] for an unknown column or a missing value (naming the example).
    pub fn values(&self, name: &str) -> Result<Vec<f64>> {
        self.column(name)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| Error::Shape {
                    what: format!("score `{name}`"),
                    message: format!(
                        "example {i} has no value (measured fewer than twice for a variance?)"
                    ),
                })
            })
            .collect()
    }

    /// Writes `dir` (`scores.csv`, `manifest.json`) atomically through kiln-checkpoint's
    /// [`AtomicDir`](kiln_checkpoint::AtomicDir): into a hidden sibling, synced, then renamed; an
    /// existing `dir` is replaced only with `force`, and only at that rename.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] for an existing output without `force` or a failed write.
    pub fn save(&self, dir: &Path, force: bool) -> Result<()> {
        let out = kiln_checkpoint::AtomicDir::create(dir, force)?;
        let mut csv = self.columns.join(",");
        csv.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| v.map(|x| format!("{x:?}")).unwrap_or_default())
                .collect();
            csv.push_str(&cells.join(","));
            csv.push('\n');
        }
        let manifest = serde_json::to_string_pretty(&Manifest {
            examples: self.rows.len(),
            ..self.manifest.clone()
        })
        .map_err(|e| file_error(dir, e.to_string()))?;
        for (file, bytes) in [
            ("scores.csv", csv.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
        ] {
            let path = out.path().join(file);
            std::fs::write(&path, bytes).map_err(|e| file_error(&path, e.to_string()))?;
        }
        out.commit()?;
        Ok(())
    }

    /// Reads a `NAME.scores` directory.
    ///
    /// # Errors
    /// [`Error::File`] naming the file and line for a missing file, a manifest of another format,
    /// a row of the wrong width or a value that is not a number.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |file: &str| {
            let p = dir.join(file);
            std::fs::read_to_string(&p).map_err(|e| file_error(&p, e.to_string()))
        };
        let mpath = dir.join("manifest.json");
        let manifest: Manifest = serde_json::from_str(&read("manifest.json")?)
            .map_err(|e| file_error(&mpath, e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(file_error(
                &mpath,
                format!("format `{}`; this kiln reads `{FORMAT}`", manifest.format),
            ));
        }
        let cpath = dir.join("scores.csv");
        let text = read("scores.csv")?;
        let mut lines = text.lines();
        let columns: Vec<String> = lines
            .next()
            .ok_or_else(|| file_error(&cpath, "is empty"))?
            .split(',')
            .map(str::to_owned)
            .collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != columns.len() {
                return Err(file_error(
                    &cpath,
                    format!(
                        "line {}: {} cells for {} columns",
                        i + 2,
                        cells.len(),
                        columns.len()
                    ),
                ));
            }
            let row = cells
                .iter()
                .map(|c| {
                    if c.is_empty() {
                        Ok(None)
                    } else {
                        c.parse::<f64>().map(Some).map_err(|_| {
                            file_error(&cpath, format!("line {}: `{c}` is not a number", i + 2))
                        })
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(row);
        }
        if rows.len() != manifest.examples {
            return Err(file_error(
                &cpath,
                format!(
                    "{} rows; the manifest says {} examples",
                    rows.len(),
                    manifest.examples
                ),
            ));
        }
        Ok(Self {
            manifest,
            columns,
            rows,
        })
    }
}
