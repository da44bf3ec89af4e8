//! Printing: tables for people, JSON for scripts, and the formats of values in tables.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::fmt::Display;
use tabled::settings::{Padding, Style};
use tabled::{Table, Tabled};

/// Prints `rows` as a table (or `empty` when there are none), or as a JSON array.
pub fn print_rows<T: Tabled + Serialize>(
    rows: &[T],
    json: bool,
    empty: &str,
) -> anyhow::Result<()> {
    if json {
        print_json(&rows)
    } else {
        if rows.is_empty() {
            println!("{empty}");
        } else {
            println!("{}", table(rows));
        }
        Ok(())
    }
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Rows as a plain table: a header line, then one line per row, columns two spaces apart.
pub fn table<T: Tabled>(rows: &[T]) -> String {
    let mut table = Table::new(rows);
    table.with(Style::empty()).with(Padding::new(0, 2, 0, 0));
    // Trailing blanks are padding, not content.
    table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A time as RFC 3339, to the second, in UTC.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "-".to_string(), time)
}

/// A value, or `-` for none.
pub fn opt<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// A database URL fit to print: without its password, if it has one.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // user:password@host... (only before the first '/', where the authority ends)
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:****@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `key:  value` lines, values aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        let line = format!("{:<width$} {value}", format!("{key}:"), width = width);
        println!("{}", line.trim_end());
    }
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgresql://postgres@127.0.0.1:32221/halyard"),
            "postgresql://postgres@127.0.0.1:32221/halyard"
        );
        assert_eq!(
            redact_url("postgresql://admin:s3cret@db.example:5432/halyard?sslmode=require"),
            "postgresql://admin:****@db.example:5432/halyard?sslmode=require"
        );
        assert_eq!(redact_url("host=localhost"), "host=localhost");
    }

    #[test]
    fn times_are_printed_to_the_second() {
        let t = DateTime::parse_from_rfc3339("2024-05-06T07:08:09.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time(&t), "2024-05-06T07:08:09Z");
        assert_eq!(opt_time(&None), "-");
    }
}
