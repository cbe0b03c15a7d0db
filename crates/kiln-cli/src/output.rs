//! Output of the CLI: aligned tables for people, JSON and CSV for scripts, atomic files.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::error::CliError;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Aligned human-readable tables (the default).
    Table,
    /// One JSON object (or an array for sweeps) on stdout.
    Json,
    /// CSV with a header row on stdout.
    Csv,
}

impl Format {
    pub(crate) fn from_flags(json: bool, csv: bool) -> Self {
        match (json, csv) {
            (true, _) => Self::Json,
            (_, true) => Self::Csv,
            _ => Self::Table,
        }
    }
}

/// A table with a header row; the first column is left-aligned, the others right-aligned unless
/// [`left_aligned`](Table::left_aligned).
#[derive(Debug, Default)]
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    left_aligned: bool,
}

impl Table {
    pub(crate) fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            left_aligned: false,
        }
    }

    /// Left-aligns every column (for text rather than numbers).
    pub(crate) fn left_aligned(mut self) -> Self {
        self.left_aligned = true;
        self
    }

    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub(crate) fn render(&self) -> String {
        let cols = self
            .headers
            .len()
            .max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut widths = vec![0; cols];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |row: &[String]| {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = w - cell.chars().count();
                if i > 0 {
                    text.push_str("  ");
                }
                if i == 0 || self.left_aligned {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        if self.headers.iter().any(|h| !h.is_empty()) {
            line(&self.headers);
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            line(&rule);
        }
        for row in &self.rows {
            line(row);
        }
        out
    }
}

/// What a command produces, in all three formats.
pub(crate) struct Report {
    /// Printed above the tables.
    pub(crate) title: String,
    /// Human tables, printed in order with a blank line between them.
    pub(crate) tables: Vec<Table>,
    /// Printed below the tables.
    pub(crate) notes: Vec<String>,
    /// The `--json` value.
    pub(crate) json: Value,
    /// The `--csv` rows: each a list of (column, value); the first row's keys are the header.
    pub(crate) csv_rows: Vec<Vec<(String, Value)>>,
}

impl Report {
    pub(crate) fn print(&self, format: Format) -> Result<(), CliError> {
        let text = match format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(&self.json).map_err(CliError::Json)?;
                s.push('\n');
                s
            }
            Format::Csv => to_csv(&self.csv_rows),
            Format::Table => {
                let mut s = format!("{}\n\n", self.title);
                for (i, t) in self.tables.iter().enumerate() {
                    if i > 0 {
                        s.push('\n');
                    }
                    s.push_str(&t.render());
                }
                if !self.notes.is_empty() {
                    s.push('\n');
                    for n in &self.notes {
                        s.push_str(n);
                        s.push('\n');
                    }
                }
                s
            }
        };
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            // A closed pipe (`kiln ... | head`) is not an error worth reporting.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(|source| CliError::Io {
                path: "<stdout>".into(),
                source,
            }),
        }
    }
}

fn to_csv(rows: &[Vec<(String, Value)>]) -> String {
    let mut out = String::new();
    let Some(first) = rows.first() else {
        return out;
    };
    let header: Vec<String> = first.iter().map(|(k, _)| csv_field(k)).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|(_, v)| match v {
                Value::String(s) => csv_field(s),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// fsynced and renamed over `path`, then the directory is fsynced. A reader never sees a partial
/// file, and a crash leaves either the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let io_err = |source| CliError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    tmp.write_all(bytes).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    // Make the rename itself durable. Directories cannot be opened for syncing everywhere
    // (Windows); the file is complete either way.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["name", "value"]);
        t.row(["a", "1"]).row(["longer", "12345"]);
        assert_eq!(
            t.render(),
            "name    value\n------  -----\na           1\nlonger  12345\n"
        );
    }

    #[test]
    fn csv_quotes_when_needed() {
        let rows = vec![vec![
            ("law".to_string(), Value::from("a,b")),
            ("x".to_string(), Value::from(1.5)),
        ]];
        assert_eq!(to_csv(&rows), "law,x\n\"a,b\",1.5\n");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.svg");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }
}
