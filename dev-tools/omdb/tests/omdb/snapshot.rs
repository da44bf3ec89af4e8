//! Expected-output files: omdb's output with what varies from run to run (ids, times, ports)
//! redacted, compared exactly with `tests/snapshots/<name>.txt`. With
//! `OMDB_UPDATE_SNAPSHOTS=1` the files are rewritten instead (review the diff before
//! committing it).

use regex::Regex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap()
});
static TIME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z").unwrap());
static PORT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"127\.0\.0\.1:\d+").unwrap());

/// Replaces ids, times and ports with stable tokens. A known id (registered with a name)
/// becomes `<name>`; any other id `<uuid-N>`, numbered in order of first appearance within
/// one text, so the snapshot still shows which rows name the same object (or, `anonymous`,
/// plain `<uuid>`, for output whose order is random). In a table cell (followed by a column
/// gap or the end of the line) a token is padded to the width of what it replaces, so
/// columns stay aligned. A port's digits become `N`s.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    known: BTreeMap<String, String>,
    anonymous: bool,
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Shows `id` as `<name>`.
    pub fn name(&mut self, id: impl ToString, name: &str) -> &mut Redactor {
        self.known.insert(id.to_string(), format!("<{name}>"));
        self
    }

    /// Shows every unnamed id as `<uuid>`, unnumbered.
    pub fn anonymous(&mut self) -> &mut Redactor {
        self.anonymous = true;
        self
    }

    pub fn redact(&self, text: &str) -> String {
        let mut numbered: BTreeMap<String, String> = BTreeMap::new();
        let text = replace(text, &UUID, |id| match self.known.get(id) {
            Some(token) => token.clone(),
            None if self.anonymous => "<uuid>".to_string(),
            None => {
                let next = numbered.len() + 1;
                numbered
                    .entry(id.to_string())
                    .or_insert_with(|| format!("<uuid-{next}>"))
                    .clone()
            }
        });
        let text = replace(&text, &TIME, |_| "<time>".to_string());
        let text = PORT.replace_all(&text, |caps: &regex::Captures<'_>| {
            format!(
                "127.0.0.1:{}",
                "N".repeat(caps[0].len() - "127.0.0.1:".len())
            )
        });
        text.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

/// Replaces each match of `pattern` with `token(match)`, padded to the match's width when
/// the match is a table cell (followed by two blanks or the end of a line).
fn replace(text: &str, pattern: &Regex, mut token: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for found in pattern.find_iter(text) {
        out.push_str(&text[last..found.start()]);
        let rest = &text[found.end()..];
        let cell = rest.starts_with("  ") || rest.is_empty() || rest.starts_with('\n');
        let replacement = token(found.as_str());
        if cell {
            out.push_str(&pad(&replacement, found.as_str().len()));
        } else {
            out.push_str(&replacement);
        }
        last = found.end();
    }
    out.push_str(&text[last..]);
    out
}

fn pad(token: &str, width: usize) -> String {
    format!("{token:<width$}")
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(format!("{name}.txt"))
}

/// Snapshots compared (or rewritten) together, so one run reports every mismatch.
#[derive(Debug, Default)]
pub struct Snapshots {
    mismatches: Vec<String>,
}

impl Snapshots {
    pub fn new() -> Snapshots {
        Snapshots::default()
    }

    /// Compares `actual` with the snapshot `name` (or rewrites it under
    /// `OMDB_UPDATE_SNAPSHOTS=1`).
    pub fn check(&mut self, name: &str, actual: &str) {
        let path = path(name);
        if std::env::var("OMDB_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            format!(
                "(cannot read {}: {e}; run with OMDB_UPDATE_SNAPSHOTS=1)",
                path.display()
            )
        });
        if expected != actual {
            self.mismatches
                .push(format!("{name}:\n{}", diff(&expected, actual)));
        }
    }

    /// Panics with every mismatch found.
    pub fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} snapshot(s) differ (rerun with OMDB_UPDATE_SNAPSHOTS=1 to accept the new \
             output, then review the diff):\n\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n\n")
        );
    }
}

/// A line diff: `-` expected, `+` actual (a plain longest-common-subsequence walk; the
/// snapshots are short).
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out.join("\n")
}

#[test]
fn redaction_numbers_ids_and_keeps_columns_aligned() {
    let id1 = "0a1b2c3d-0000-4000-8000-000000000001";
    let id2 = "0a1b2c3d-0000-4000-8000-000000000002";
    let sled = "0a1b2c3d-0000-4000-8000-00000000000f";
    let text = format!(
        "ID{}  SLED\n{id1}  {sled}\n{id2}  {sled}\n{id1}  2024-01-02T03:04:05Z  127.0.0.1:54321  \n\
         sled {id2} (127.0.0.1:7) at 2024-01-02T03:04:05Z.\n",
        " ".repeat(34)
    );
    let mut redactor = Redactor::new();
    redactor.name(sled, "sled-0");
    let redacted = redactor.redact(&text);
    let lines: Vec<&str> = redacted.lines().collect();
    assert_eq!(lines[1], format!("<uuid-1>{}  <sled-0>", " ".repeat(28)));
    assert_eq!(lines[2], format!("<uuid-2>{}  <sled-0>", " ".repeat(28)));
    assert_eq!(
        lines[3],
        format!(
            "<uuid-1>{}  <time>{}  127.0.0.1:NNNNN",
            " ".repeat(28),
            " ".repeat(14)
        )
    );
    assert_eq!(lines[4], "sled <uuid-2> (127.0.0.1:N) at <time>.");
    let anonymous = Redactor::new()
        .anonymous()
        .redact(&format!("{id1}  x\n{id2}\n"));
    assert_eq!(anonymous, format!("<uuid>{}  x\n<uuid>\n", " ".repeat(30)));
    assert_eq!(diff("a\nb\nc", "a\nc\nd"), "  a\n- b\n  c\n+ d".to_string());
}
