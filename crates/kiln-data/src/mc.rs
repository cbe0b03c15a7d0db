//! Multiple-choice questions: MedMCQA, MedQA-USMLE (4 options) and SWAG-style rows, read from
//! JSONL or Parquet (`.parquet`: the Hugging Face hub's files, uncompressed or Snappy), and the
//! prompts lm-evaluation-harness builds for them.
//!
//! | format | fields | answer |
//! |---|---|---|
//! | [`McFormat::MedMcqa`] | `id, question, opa, opb, opc, opd, cop, choice_type, subject_name` (`topic_name`, `exp` ignored) | `cop`: 0–3 as the Hugging Face dataset (`openlifescienceai/medmcqa`) and lm-eval read it; the original release's 1–4 with [`ReadOptions::one_based_cop`]; −1 or absent = unlabelled (the test split) |
//! | [`McFormat::MedQa`] | `question, options {A, B, C, D}, answer_idx` (`answer`, `meta_info` kept as subject) | `answer_idx` letter |
//! | [`McFormat::Swag`] | `sent1, sent2, ending0…ending3, label` (BioMedLM's MC input; `id` optional) | `label` |
//!
//! Every bad row is reported with its file and 1-based line number and what is wrong.
//!
//! [`medmcqa_prompt`] is lm-evaluation-harness's `medmcqa` `doc_to_text` byte for byte
//! (`Question: …\nChoices:\nA. …\nB. …\nC. …\nD. …\nAnswer:`), with the continuations
//! `" A"` … `" D"` (`target_delimiter` `" "`, `doc_to_choice` `['A','B','C','D']`);
//! [`medqa_prompt`] is its `medqa_4options` `doc_to_text` (no `Choices:` line), used for
//! MedQA and SWAG-style rows; [`fewshot_context`] joins solved examples the way lm-eval does (`"\n\n"` between examples,
//! each followed by `" "` and its answer letter).
//!
//! ```
//! use kiln_data::mc::{McFormat, ReadOptions, read_mc, medmcqa_prompt};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("dev.jsonl");
//! std::fs::write(&path, r#"{"id": "q1", "question": "Which vitamin is fat soluble?", "opa": "C", "opb": "B12", "opc": "K", "opd": "B1", "cop": 2, "choice_type": "single", "subject_name": "Biochemistry"}
//! "#)?;
//! let rows = read_mc(&path, McFormat::MedMcqa, &ReadOptions::default())?;
//! assert_eq!(rows[0].answer, Some(2));
//! assert_eq!(medmcqa_prompt(&rows[0]),
//!     "Question: Which vitamin is fat soluble?\nChoices:\nA. C\nB. B12\nC. K\nD. B1\nAnswer:");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, io_err};

/// A file layout of multiple-choice rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McFormat {
    /// MedMCQA (`opa…opd`, `cop`).
    MedMcqa,
    /// MedQA-USMLE with 4 options (`options`, `answer_idx`).
    MedQa,
    /// SWAG-style (`sent1`, `sent2`, `ending0…`, `label`).
    Swag,
}

impl McFormat {
    /// Parses `medmcqa`, `medqa` or `swag`.
    ///
    /// # Errors
    /// [`Error::Config`] for another name.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "medmcqa" => Ok(Self::MedMcqa),
            "medqa" => Ok(Self::MedQa),
            "swag" => Ok(Self::Swag),
            other => Err(Error::Config {
                message: format!(
                    "unknown multiple-choice format `{other}`; the formats are medmcqa, medqa and swag"
                ),
            }),
        }
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McExample {
    /// The row's id (`id` field, or `line-N`).
    pub id: String,
    /// The question (SWAG: `sent1`).
    pub question: String,
    /// Text before each ending (SWAG's `sent2`; empty otherwise).
    pub header: String,
    /// The options, in order.
    pub choices: Vec<String>,
    /// Index of the correct option; `None` when the row is unlabelled.
    pub answer: Option<usize>,
    /// Subject (MedMCQA `subject_name`, MedQA `meta_info`).
    pub subject: Option<String>,
    /// MedMCQA's `choice_type` (`single` / `multi`).
    pub choice_type: Option<String>,
}

/// How to read rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadOptions {
    /// MedMCQA's `cop` counts from 1 (the original GitHub/Kaggle release) instead of 0 (the
    /// Hugging Face dataset lm-eval reads).
    pub one_based_cop: bool,
    /// Read at most this many rows.
    pub limit: Option<usize>,
}

/// Reads a file of multiple-choice rows in `format`: JSONL (one object per line), or Parquet
/// when the name ends in `.parquet` (the same fields as columns).
///
/// # Errors
/// [`Error::Io`]; [`Error::Input`] naming the line (or Parquet row) for a row that is not
/// JSON, lacks a field, has an empty option, or an answer out of range, or for a Parquet file
/// kiln cannot decode; [`Error::Config`] for a file with no row.
pub fn read_mc(path: &Path, format: McFormat, options: &ReadOptions) -> Result<Vec<McExample>> {
    if path.extension().is_some_and(|e| e == "parquet") {
        return read_parquet(path, format, options);
    }
    let f = File::open(path).map_err(io_err(path))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        if options.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let bad = |message: String| Error::Input {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let v: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let row = parse_row(&v, format, options, i + 1).map_err(bad)?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::Config {
            message: format!("{}: no multiple-choice rows", path.display()),
        });
    }
    Ok(rows)
}

/// Parquet rows (the Hugging Face hub's layout of MedMCQA), each turned into the JSON object
/// the JSONL reader takes; a bad row is reported by its 1-based row number.
fn read_parquet(path: &Path, format: McFormat, options: &ReadOptions) -> Result<Vec<McExample>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = File::open(path).map_err(io_err(path))?;
    let bad_file = |e: parquet::errors::ParquetError| Error::Input {
        path: path.to_owned(),
        line: 0,
        message: format!(
            "not a Parquet file kiln can read ({e}); kiln reads uncompressed and Snappy-compressed Parquet (the Hugging Face hub's default), or convert to JSONL"
        ),
    };
    let reader = SerializedFileReader::new(f).map_err(bad_file)?;
    let mut rows = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(bad_file)?.enumerate() {
        if options.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let row = row.map_err(bad_file)?;
        let v = row.to_json_value();
        let parsed = parse_row(&v, format, options, i + 1).map_err(|message| Error::Input {
            path: path.to_owned(),
            line: i + 1,
            message: format!("row {}: {message}", i + 1),
        })?;
        rows.push(parsed);
    }
    if rows.is_empty() {
        return Err(Error::Config {
            message: format!("{}: no multiple-choice rows", path.display()),
        });
    }
    Ok(rows)
}

fn text(v: &Value, field: &str) -> std::result::Result<String, String> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("field `{field}` is {other}, not a string")),
        None => Err(format!("no field `{field}`")),
    }
}

fn optional_text(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn id_of(v: &Value, line: usize) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("line-{line}"),
    }
}

fn parse_row(
    v: &Value,
    format: McFormat,
    options: &ReadOptions,
    line: usize,
) -> std::result::Result<McExample, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let (question, header, choices, answer, subject, choice_type) = match format {
        McFormat::MedMcqa => {
            let choices = ["opa", "opb", "opc", "opd"]
                .iter()
                .map(|f| text(v, f))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let answer = match v.get("cop") {
                None | Some(Value::Null) => None,
                Some(c) => {
                    let c = c
                        .as_i64()
                        .ok_or_else(|| format!("`cop` is {c}, not an integer"))?;
                    let base = i64::from(options.one_based_cop);
                    if c == -1 {
                        None
                    } else if (base..base + 4).contains(&c) {
                        Some((c - base) as usize)
                    } else {
                        return Err(format!(
                            "`cop` {c} is outside {base}–{} ({}); {}",
                            base + 3,
                            if options.one_based_cop {
                                "the original release's 1-based answers"
                            } else {
                                "the Hugging Face dataset's 0-based answers"
                            },
                            if options.one_based_cop {
                                "drop --one-based-cop for 0-based files"
                            } else {
                                "for the original 1-based release pass --one-based-cop"
                            }
                        ));
                    }
                }
            };
            (
                text(v, "question")?,
                String::new(),
                choices,
                answer,
                optional_text(v, "subject_name"),
                optional_text(v, "choice_type"),
            )
        }
        McFormat::MedQa => {
            let opts = v
                .get("options")
                .and_then(Value::as_object)
                .ok_or("no object field `options` ({\"A\": …, \"B\": …, \"C\": …, \"D\": …})")?;
            let letters = ["A", "B", "C", "D"];
            let choices = letters
                .iter()
                .map(|l| {
                    opts.get(*l)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| format!("`options` has no string `{l}` (4-option MedQA)"))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if opts.len() != 4 {
                return Err(format!(
                    "`options` has {} entries; this reader takes the 4-option set (A–D)",
                    opts.len()
                ));
            }
            let answer = match v.get("answer_idx").and_then(Value::as_str) {
                Some(a) => Some(
                    letters
                        .iter()
                        .position(|l| *l == a)
                        .ok_or_else(|| format!("`answer_idx` `{a}` is not one of A–D"))?,
                ),
                None => None,
            };
            (
                text(v, "question")?,
                String::new(),
                choices,
                answer,
                optional_text(v, "meta_info"),
                None,
            )
        }
        McFormat::Swag => {
            let mut choices = Vec::new();
            while let Some(e) = v.get(format!("ending{}", choices.len())) {
                choices.push(
                    e.as_str()
                        .ok_or_else(|| format!("`ending{}` is not a string", choices.len()))?
                        .to_owned(),
                );
            }
            if choices.len() < 2 {
                return Err("fewer than two endings (`ending0`, `ending1`, …)".into());
            }
            let answer = match v.get("label") {
                None | Some(Value::Null) => None,
                Some(l) => {
                    let l = l
                        .as_i64()
                        .ok_or_else(|| format!("`label` is {l}, not an integer"))?;
                    if l == -1 {
                        None
                    } else if (0..choices.len() as i64).contains(&l) {
                        Some(l as usize)
                    } else {
                        return Err(format!(
                            "`label` {l} is not an ending index (0–{})",
                            choices.len() - 1
                        ));
                    }
                }
            };
            (
                text(v, "sent1")?,
                optional_text(v, "sent2").unwrap_or_default(),
                choices,
                answer,
                None,
                None,
            )
        }
    };
    if let Some(k) = choices.iter().position(|c| c.trim().is_empty()) {
        return Err(format!("option {k} is empty"));
    }
    Ok(McExample {
        id: id_of(v, line),
        question,
        header,
        choices,
        answer,
        subject,
        choice_type,
    })
}

/// The answer letters lm-eval's `medmcqa` task scores (`doc_to_choice`).
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// lm-eval's `medmcqa` `doc_to_text` (also used for MedQA rows here): the question, the four
/// lettered options and `Answer:`.
pub fn medmcqa_prompt(ex: &McExample) -> String {
    let mut p = format!("Question: {}\nChoices:\n", ex.question);
    for (letter, option) in LETTERS.iter().zip(&ex.choices) {
        p.push_str(&format!("{letter}. {option}\n"));
    }
    p.push_str("Answer:");
    p
}

/// lm-eval's `medqa_4options` `doc_to_text` (for MedQA and SWAG-style rows): the question,
/// the four lettered options and `Answer:` (no `Choices:` line).
pub fn medqa_prompt(ex: &McExample) -> String {
    let mut p = format!("Question: {}\n", ex.question);
    for (letter, option) in LETTERS.iter().zip(&ex.choices) {
        p.push_str(&format!("{letter}. {option}\n"));
    }
    p.push_str("Answer:");
    p
}

/// The lm-eval prompt of `ex` for `format`: `medmcqa`'s for MedMCQA, `medqa_4options`' for
/// MedQA and SWAG-style rows.
pub fn prompt(format: McFormat, ex: &McExample) -> String {
    match format {
        McFormat::MedMcqa => medmcqa_prompt(ex),
        McFormat::MedQa | McFormat::Swag => medqa_prompt(ex),
    }
}

/// lm-eval's few-shot context for `doc`: each shot's prompt, `" "` and its answer letter,
/// joined by `"\n\n"`, then `"\n\n"` and `doc`'s prompt (no shots: the prompt alone).
///
/// # Errors
/// [`Error::Config`] if a shot has no answer.
pub fn fewshot_context(format: McFormat, shots: &[McExample], doc: &McExample) -> Result<String> {
    let mut out = String::new();
    for s in shots {
        let letter = s
            .answer
            .and_then(|a| LETTERS.get(a))
            .ok_or_else(|| Error::Config {
                message: format!(
                    "few-shot example `{}` has no answer among A–D; shots need one",
                    s.id
                ),
            })?;
        out.push_str(&prompt(format, s));
        out.push(' ');
        out.push_str(letter);
        out.push_str("\n\n");
    }
    out.push_str(&prompt(format, doc));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rows.jsonl");
        std::fs::write(&p, lines).unwrap();
        (dir, p)
    }

    #[test]
    fn formats_read_into_one_shape() {
        let (_d, p) = write(
            r#"{"question": "Q?", "answer": "x", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "meta_info": "step1", "answer_idx": "C"}"#,
        );
        let r = read_mc(&p, McFormat::MedQa, &ReadOptions::default()).unwrap();
        assert_eq!(r[0].choices, ["a", "b", "c", "d"]);
        assert_eq!((r[0].answer, r[0].id.as_str()), (Some(2), "line-1"));
        assert_eq!(r[0].subject.as_deref(), Some("step1"));
        let (_d, p) = write(
            "{\"sent1\": \"S\", \"sent2\": \"\", \"ending0\": \"e0\", \"ending1\": \"e1\", \"ending2\": \"e2\", \"label\": 1}\n\n",
        );
        let r = read_mc(&p, McFormat::Swag, &ReadOptions::default()).unwrap();
        assert_eq!((r[0].choices.len(), r[0].answer), (3, Some(1)));
        let (_d, p) = write(
            r#"{"id": "a", "question": "Q", "opa": "1", "opb": "2", "opc": "3", "opd": "4", "cop": 4, "choice_type": "multi", "subject_name": "Anatomy"}
{"id": "b", "question": "Q", "opa": "1", "opb": "2", "opc": "3", "opd": "4", "cop": -1}"#,
        );
        let one = ReadOptions {
            one_based_cop: true,
            limit: None,
        };
        let r = read_mc(&p, McFormat::MedMcqa, &one).unwrap();
        assert_eq!((r[0].answer, r[1].answer), (Some(3), None));
        assert_eq!(r[0].choice_type.as_deref(), Some("multi"));
    }

    #[test]
    fn bad_rows_name_their_line() {
        let good = r#"{"id": "a", "question": "Q", "opa": "1", "opb": "2", "opc": "3", "opd": "4", "cop": 0}"#;
        let cases = [
            ("{\"id\": 1", "line 2: not a JSON object"),
            (
                r#"{"id": "b", "question": "Q", "opa": "1", "opb": "2", "opc": "3", "cop": 0}"#,
                "no field `opd`",
            ),
            (
                r#"{"id": "b", "question": "Q", "opa": "1", "opb": "2", "opc": "3", "opd": "4", "cop": 4}"#,
                "pass --one-based-cop",
            ),
            (
                r#"{"id": "b", "question": "Q", "opa": "1", "opb": " ", "opc": "3", "opd": "4", "cop": 1}"#,
                "option 1 is empty",
            ),
        ];
        for (row, want) in cases {
            let (_d, p) = write(&format!("{good}\n{row}\n"));
            let e = read_mc(&p, McFormat::MedMcqa, &ReadOptions::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(":2:"), "{e}");
            assert!(
                e.contains(want.trim_start_matches("line 2: ")),
                "{e} / {want}"
            );
        }
        let (_d, p) = write(
            r#"{"question": "Q", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "E"}"#,
        );
        let e = read_mc(&p, McFormat::MedQa, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1:") && e.contains("`E`"), "{e}");
    }

    #[test]
    fn fewshot_joins_as_lm_eval() {
        let ex = |q: &str, a| McExample {
            id: q.into(),
            question: q.into(),
            header: String::new(),
            choices: vec!["w".into(), "x".into(), "y".into(), "z".into()],
            answer: a,
            subject: None,
            choice_type: None,
        };
        let ctx =
            fewshot_context(McFormat::MedMcqa, &[ex("one", Some(1))], &ex("two", None)).unwrap();
        assert_eq!(
            ctx,
            "Question: one\nChoices:\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\nQuestion: two\nChoices:\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
        assert!(fewshot_context(McFormat::MedMcqa, &[ex("one", None)], &ex("two", None)).is_err());
        assert_eq!(
            prompt(McFormat::Swag, &ex("q", None)),
            "Question: q\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
    }
}
