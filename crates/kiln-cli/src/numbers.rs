//! Parsing and printing the large counts the CLI deals in (`70B`, `1.5T`, `2e12`).

/// Parses a count: a plain or scientific number (`2000`, `2e12`) optionally followed by a
/// suffix `K` (1e3), `M` (1e6), `B` or `G` (1e9), `T` (1e12), `P` (1e15), case-insensitive.
/// Underscores and commas between digits are ignored (`1_000_000`, `1,000,000`).
pub(crate) fn parse_count(text: &str) -> Result<f64, String> {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| *c != '_' && *c != ',')
        .collect();
    if cleaned.is_empty() {
        return Err("empty value; expected a number such as 70B, 1.5T or 2e12".into());
    }
    let not_a_number = || format!("`{text}` is not a number; expected e.g. 70B, 1.5T or 2e12");
    let (value, multiplier) = match cleaned.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let value: f64 = cleaned[..i].parse().map_err(|_| not_a_number())?;
            let m = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'B' | 'G' => 1e9,
                'T' => 1e12,
                'P' => 1e15,
                other => {
                    return Err(format!(
                        "`{text}`: unknown suffix `{other}`; use K (1e3), M (1e6), B or G (1e9), T (1e12) or P (1e15)"
                    ));
                }
            };
            (value, m)
        }
        _ => (cleaned.parse::<f64>().map_err(|_| not_a_number())?, 1.0),
    };
    let value = value * multiplier;
    if !value.is_finite() {
        return Err(format!("`{text}` is not a finite number"));
    }
    Ok(value)
}

/// `parse_count` for clap: the value must also be greater than zero.
pub(crate) fn positive_count(text: &str) -> Result<f64, String> {
    let v = parse_count(text)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("`{text}` must be greater than zero"))
    }
}

/// `parse_count` for clap: the value may be zero but not negative.
pub(crate) fn non_negative_count(text: &str) -> Result<f64, String> {
    let v = parse_count(text)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("`{text}` must not be negative"))
    }
}

/// A plain float (losses, MFU, prices), finite.
pub(crate) fn finite(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{text}` is not a finite number"))
    }
}

/// Scientific notation with four significant digits: `2.418e10`.
pub(crate) fn sci(x: f64) -> String {
    format!("{x:.3e}")
}

/// A count with scientific notation and a short human form: `2.418e10 (24.2B)`.
pub(crate) fn count(x: f64) -> String {
    let human = [(1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]
        .into_iter()
        .find(|(scale, _)| x.abs() >= *scale)
        .map(|(scale, s)| format!(" ({:.3}{s})", x / scale));
    format!("{}{}", sci(x), human.unwrap_or_default())
}

/// Dollars with thousands separators: `$1,425,060`.
pub(crate) fn dollars(x: f64) -> String {
    if !x.is_finite() {
        return format!("${x}");
    }
    let whole = format!("{:.0}", x.abs());
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}${grouped}", if x < 0.0 { "-" } else { "" })
}

/// A ratio as a percentage with two decimals: `70.96%`.
pub(crate) fn percent(ratio: f64) -> String {
    format!("{:.2}%", 100.0 * ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_scientific() {
        assert_eq!(parse_count("70B").unwrap(), 70e9);
        assert_eq!(parse_count("1.5T").unwrap(), 1.5e12);
        assert_eq!(parse_count("2e12").unwrap(), 2e12);
        assert_eq!(parse_count("500m").unwrap(), 500e6);
        assert_eq!(parse_count("10k").unwrap(), 10e3);
        assert_eq!(parse_count("1_000_000").unwrap(), 1e6);
        assert_eq!(parse_count("1,000").unwrap(), 1e3);
        assert_eq!(parse_count("2.5G").unwrap(), 2.5e9);
        assert_eq!(parse_count("1e3M").unwrap(), 1e9);
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        assert!(parse_count("").is_err());
        assert!(parse_count("seventy").unwrap_err().contains("not a number"));
        assert!(parse_count("70X").unwrap_err().contains("unknown suffix"));
        assert!(positive_count("0").is_err());
        assert!(positive_count("-1B").is_err());
        assert!(non_negative_count("0").is_ok());
        assert!(parse_count("1e400").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(sci(2.4184e10), "2.418e10");
        assert_eq!(count(2.4184e10), "2.418e10 (24.184B)");
        assert_eq!(count(12.0), "1.200e1");
        assert_eq!(dollars(1_425_060.4), "$1,425,060");
        assert_eq!(dollars(999.0), "$999");
        assert_eq!(percent(0.7096), "70.96%");
    }
}
