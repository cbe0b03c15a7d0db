//! The README model card written next to a merge.

use std::fmt::Write as _;

use crate::config::ParamValue;
use crate::plan::MergePlan;

/// A short Markdown model card: method, inputs, parameters, output, warnings.
pub(crate) fn model_card(plan: &MergePlan, tokenizer_files: &[&str]) -> String {
    let c = &plan.config;
    let info = c.method.info();
    let mut s = String::new();
    let _ = writeln!(s, "---\ntags:\n- merge\n- kiln\n---\n");
    let _ = writeln!(s, "# Merged model\n");
    let _ = writeln!(
        s,
        "Made with [kiln](https://github.com/kiln-rs/kiln) {} using **{}** ([reference]({})).\n",
        env!("CARGO_PKG_VERSION"),
        info.pretty_name,
        info.reference_url
    );
    let _ = writeln!(s, "## Inputs\n");
    if let Some(b) = &c.base_model {
        let _ = writeln!(s, "- base model: `{}`", b.name);
    }
    for m in &c.models {
        let _ = write!(s, "- `{}`", m.model.name);
        if !m.parameters.is_empty() {
            let _ = write!(s, " — {}", params(&m.parameters));
        }
        let _ = writeln!(s);
    }
    if !c.parameters.is_empty() {
        let _ = writeln!(s, "\nParameters: {}", params(&c.parameters));
    }
    let _ = writeln!(s, "\n## Output\n");
    let _ = writeln!(
        s,
        "{} tensors in {} shard(s); computed in {:?}, stored as {}. The configuration is in `{}`.",
        plan.tensors.len(),
        plan.shards.shards().len(),
        c.compute,
        c.out_dtype
            .map_or("the base's dtypes".to_owned(), |d| d.to_string()),
        crate::executor::CONFIG_COPY
    );
    if c.tokenizer_source.is_some() {
        if tokenizer_files.is_empty() {
            let _ = writeln!(
                s,
                "\n`tokenizer_source` was set but the source had no tokenizer files."
            );
        } else {
            let _ = writeln!(s, "\nTokenizer copied: {}.", tokenizer_files.join(", "));
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for w in &plan.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    s
}

fn params(p: &std::collections::BTreeMap<String, ParamValue>) -> String {
    p.iter()
        .map(|(k, v)| format!("`{k}`: {}", value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn value(v: &ParamValue) -> String {
    match v {
        ParamValue::Scalar(s) => match s {
            crate::config::Scalar::Number(n) => n.to_string(),
            crate::config::Scalar::Bool(b) => b.to_string(),
            crate::config::Scalar::Word(w) => w.clone(),
        },
        ParamValue::Gradient(g) => format!("{g:?} over layers"),
        ParamValue::Conditional(entries) => entries
            .iter()
            .map(|(f, v)| match f {
                Some(f) => format!("{} where name contains `{f}`", value(v)),
                None => format!("{} otherwise", value(v)),
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}
