//! Output of the CLI: aligned tables for people, JSON and CSV for scripts, atomic files.

use std::io::Write;

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

/// How a table shows a number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shown {
    /// `2.418e10 (24.2B)`.
    Count,
    /// `2.418e10`.
    Sci,
    /// Fixed decimals.
    Fixed(usize),
}

/// One table row of a result: its label, the result field it shows (dotted for nested fields),
/// and how.
pub(crate) struct Row(
    pub(crate) &'static str,
    pub(crate) &'static str,
    pub(crate) Shown,
);

/// A JSON object's scalar fields, nested objects flattened with dotted keys (`law.e`).
fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(x, &key, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

impl Report {
    /// The report of one result, rendered three ways from the same value: `--json` is the result
    /// serialised, `--csv` its fields flattened into one row, the table the `rows` picked from it.
    pub(crate) fn of<T: serde::Serialize>(
        title: String,
        result: &T,
        rows: &[Row],
        notes: Vec<String>,
    ) -> Result<Self, CliError> {
        let json = serde_json::to_value(result).map_err(CliError::Json)?;
        let mut fields = Vec::new();
        flatten(&json, "", &mut fields);
        let mut table = Table::new(["quantity", "value"]);
        for Row(label, key, shown) in rows {
            let value = key
                .split('.')
                .try_fold(&json, |v, k| v.get(k))
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            table.row([
                (*label).to_owned(),
                match shown {
                    Shown::Count => crate::numbers::count(value),
                    Shown::Sci => crate::numbers::sci(value),
                    Shown::Fixed(d) => format!("{value:.d$}"),
                },
            ]);
        }
        Ok(Self {
            title,
            tables: vec![table],
            notes,
            json,
            csv_rows: vec![fields],
        })
    }
}

/// The path of the first JSON `null` in `v`: serde_json writes a NaN or an infinity as `null`,
/// and every number kiln prints must be finite.
fn first_null(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::Null => Some(at.to_owned()),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            first_null(
                x,
                &if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                },
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| first_null(x, &format!("{at}[{i}]"))),
        _ => None,
    }
}

impl Report {
    pub(crate) fn print(&self, format: Format) -> Result<(), CliError> {
        // Overflow is an error, not a `null` (or an `inf` in a table) with exit status 0.
        let nulls = std::iter::once(first_null(&self.json, "")).chain(
            self.csv_rows
                .iter()
                .flatten()
                .map(|(k, v)| first_null(v, k)),
        );
        if let Some(field) = nulls.flatten().next() {
            return Err(CliError::NotFinite {
                field,
                command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            });
        }
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
}
