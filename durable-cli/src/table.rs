//! Plain-text output: aligned tables, compact JSON cells and durations.

use serde_json::Value;

/// The longest cell a table prints; longer text is cut with `…`.
const MAX_CELL: usize = 60;

/// Renders rows under a header, columns padded to their widest cell, the last one unpadded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// One line, at most [`MAX_CELL`] characters.
fn clip(s: &str) -> String {
    let flat = s.replace(['\n', '\r', '\t'], " ");
    if flat.chars().count() <= MAX_CELL {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// A JSON value as one compact line (strings without quotes; null as empty).
pub fn compact(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// A string field of a JSON object.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `1.5s`, `250ms`, `3m07s`, `2h05m`.
pub fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_cells_stay_on_one_line() {
        let t = render(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "Running".into()],
                vec!["long-id".into(), "x\ny".into()],
            ],
        );
        assert_eq!(t, "ID       STATUS\na        Running\nlong-id  x y\n");
        assert_eq!(clip(&"x".repeat(100)).chars().count(), MAX_CELL);
        assert_eq!(duration(chrono::TimeDelta::milliseconds(1500)), "1.5s");
        assert_eq!(duration(chrono::TimeDelta::seconds(187)), "3m07s");
        assert_eq!(compact(Some(&serde_json::json!({"a": 1}))), r#"{"a":1}"#);
    }
}
