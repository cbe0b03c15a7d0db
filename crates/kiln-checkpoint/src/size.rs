//! Byte sizes for people: `5GB`, `500MB`, `2GiB` in, `1.23 GB` out (decimal units, as shard
//! sizes are given by transformers and mergekit).

/// `1.23 GB` style: decimal units (kB, MB, GB, TB), two decimals; `999 B` below a kilobyte.
///
/// ```
/// assert_eq!(kiln_checkpoint::size::format(5_000_000_000.0), "5.00 GB");
/// assert_eq!(kiln_checkpoint::size::format(999.0), "999 B");
/// ```
pub fn format(bytes: f64) -> String {
    [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(s, _)| bytes >= *s)
        .map_or(format!("{bytes:.0} B"), |(s, u)| {
            format!("{:.2} {u}", bytes / s)
        })
}

/// Parses a byte size: a number with an optional decimal (KB, MB, GB, TB, or K, M, G, T) or
/// binary (KiB, MiB, GiB, TiB) unit; `B` alone means bytes.
///
/// ```
/// use kiln_checkpoint::size::parse;
/// assert_eq!(parse("5GB"), Ok(5_000_000_000));
/// assert_eq!(parse("2GiB"), Ok(2 << 30));
/// assert!(parse("5 parrots").is_err());
/// ```
///
/// # Errors
/// A message saying what is wrong and which units exist.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    // The unit is the trailing run of letters, so `1e9` stays a number.
    let split = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size; expected e.g. 5GB, 500MB, 2GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
            ));
        }
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("`{text}` must be at least one byte"));
    }
    if bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is more bytes than any disk holds"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_print_in_decimal_units() {
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert_eq!(parse("1e9"), Ok(1_000_000_000));
        assert_eq!(parse("1.5 G"), Ok(1_500_000_000));
        assert!(parse("0").is_err());
        assert!(parse("1e30TB").is_err());
        assert_eq!(format(1234.0), "1.23 kB");
        assert_eq!(format(2.5e12), "2.50 TB");
    }
}
