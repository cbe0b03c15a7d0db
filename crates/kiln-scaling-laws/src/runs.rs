//! Training runs (parameters, tokens, final loss) and reading them from CSV.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One training run: a model of `n_params` parameters trained on `tokens` tokens reached `loss`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Parameters `N`.
    pub n_params: f64,
    /// Training tokens `D`.
    pub tokens: f64,
    /// Final (smoothed) training loss, nats per token.
    pub loss: f64,
}

/// Which CSV columns hold parameters, tokens and loss. Matching ignores case and surrounding
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    /// Column of parameter counts (default `params`).
    pub params: String,
    /// Column of training-token counts (default `tokens`).
    pub tokens: String,
    /// Column of losses (default `loss`).
    pub loss: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            params: "params".into(),
            tokens: "tokens".into(),
            loss: "loss".into(),
        }
    }
}

/// Reads runs from a CSV file with a header row naming the columns (see [`parse_runs_csv`]).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened, and the errors of [`parse_runs_csv`].
pub fn read_runs_csv(path: &Path, columns: &Columns) -> Result<Vec<Run>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_runs_csv(file, &path.display().to_string(), columns)
}

/// Parses runs from CSV text. The first row is a header; other columns are ignored. Every value
/// must be a finite number greater than zero.
///
/// # Errors
/// [`Error::Csv`] with the 1-based line number for a missing column, a malformed row, a value
/// that is not a number or not positive; [`Error::EmptyCsv`] if there are no data rows.
///
/// # Example
/// ```
/// use kiln_scaling_laws::runs::{parse_runs_csv, Columns};
/// let csv = "params,tokens,loss\n1.5e8,3e9,3.49\n3.7e8,7.3e9,3.19\n";
/// let runs = parse_runs_csv(csv.as_bytes(), "runs.csv", &Columns::default())?;
/// assert_eq!(runs.len(), 2);
/// assert_eq!(runs[1].tokens, 7.3e9);
/// # Ok::<(), kiln_scaling_laws::Error>(())
/// ```
pub fn parse_runs_csv<R: Read>(
    reader: R,
    source_name: &str,
    columns: &Columns,
) -> Result<Vec<Run>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let csv_err = |line: u64, message: String| Error::Csv {
        source_name: source_name.to_owned(),
        line,
        message,
    };
    let header = rdr
        .headers()
        .map_err(|e| csv_err(error_line(&e).unwrap_or(1), e.to_string()))?
        .clone();
    if header.iter().all(str::is_empty) {
        return Err(csv_err(
            1,
            format!(
                "no header row; the first line must name the columns, e.g. `{},{},{}`",
                columns.params, columns.tokens, columns.loss
            ),
        ));
    }
    let find = |wanted: &str, flag: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(wanted.trim()))
            .ok_or_else(|| {
                csv_err(
                    1,
                    format!(
                        "no column named `{wanted}`; the header has: {}. Rename the column or name it with {flag}",
                        header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    };
    let idx = [
        (
            find(&columns.params, "--params-column")?,
            columns.params.as_str(),
        ),
        (
            find(&columns.tokens, "--tokens-column")?,
            columns.tokens.as_str(),
        ),
        (find(&columns.loss, "--loss-column")?, columns.loss.as_str()),
    ];

    let mut runs = Vec::new();
    for record in rdr.records() {
        let record = record.map_err(|e| csv_err(error_line(&e).unwrap_or(0), e.to_string()))?;
        let line = record.position().map_or(0, csv::Position::line);
        let mut values = [0.0; 3];
        for (slot, (i, name)) in values.iter_mut().zip(idx) {
            let text = record.get(i).ok_or_else(|| {
                csv_err(
                    line,
                    format!(
                        "missing value for column `{name}` (the row has {} fields)",
                        record.len()
                    ),
                )
            })?;
            let value: f64 = text
                .parse()
                .map_err(|_| csv_err(line, format!("column `{name}`: `{text}` is not a number")))?;
            if !(value.is_finite() && value > 0.0) {
                return Err(csv_err(
                    line,
                    format!("column `{name}`: {value} must be a finite number greater than zero"),
                ));
            }
            *slot = value;
        }
        runs.push(Run {
            n_params: values[0],
            tokens: values[1],
            loss: values[2],
        });
    }
    if runs.is_empty() {
        return Err(Error::EmptyCsv {
            source_name: source_name.to_owned(),
        });
    }
    Ok(runs)
}

fn error_line(e: &csv::Error) -> Option<u64> {
    e.position().map(csv::Position::line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Run>> {
        parse_runs_csv(text.as_bytes(), "t.csv", &Columns::default())
    }

    #[test]
    fn reads_runs_and_ignores_extra_columns() {
        let runs = parse("name, Params ,tokens,loss\n150M,1.51e8,1.51e9,3.68\n").unwrap();
        assert_eq!(
            runs,
            vec![Run {
                n_params: 1.51e8,
                tokens: 1.51e9,
                loss: 3.68
            }]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("params,tokens,loss\n1e8,1e9,3.0\n1e8,abc,3.0\n").unwrap_err();
        assert!(matches!(err, Error::Csv { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("`abc` is not a number"), "{err}");

        let err = parse("params,tokens,loss\n1e8,1e9,3.0\n1e8,1e9\n").unwrap_err();
        assert!(matches!(err, Error::Csv { line: 3, .. }), "{err}");

        let err = parse("params,tokens,loss\n1e8,-1e9,3.0\n").unwrap_err();
        assert!(matches!(err, Error::Csv { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("greater than zero"));

        let err = parse("params,tokens,smoothed_loss\n1e8,1e9,3.0\n").unwrap_err();
        assert!(err.to_string().contains("no column named `loss`"), "{err}");
        assert!(err.to_string().contains("`smoothed_loss`"), "{err}");
    }

    #[test]
    fn empty_inputs_are_errors() {
        assert!(matches!(
            parse("params,tokens,loss\n"),
            Err(Error::EmptyCsv { .. })
        ));
        assert!(matches!(parse(""), Err(Error::Csv { line: 1, .. })));
    }
}
