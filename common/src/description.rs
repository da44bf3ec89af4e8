//! Free-text descriptions of user-visible objects (projects, instances).

use crate::Error;

/// The longest description accepted, in characters (Oxide's limit).
pub const MAX_DESCRIPTION_CHARS: usize = 512;

/// Checks a description a user gave: at most [`MAX_DESCRIPTION_CHARS`] characters of any
/// script, and no control characters except tab and newline. NUL in particular could not be
/// stored at all (PostgreSQL's `text` and `jsonb` refuse it), and the others would garble every
/// terminal and log line that shows the description. Refused with `InvalidValue`.
pub fn validate_description(description: &str) -> Result<(), Error> {
    let length = description.chars().count();
    if length > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid_value(
            "description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters, not {length}"),
        ));
    }
    if let Some((position, control)) = description
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n'))
    {
        return Err(Error::invalid_value(
            "description",
            format!(
                "control character U+{:04X} at character {position}; only tab and newline \
                 are allowed",
                u32::from(control)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_printable_text_of_at_most_512_characters() {
        for ok in [
            "",
            "a web server",
            "two\nlines\tand a tab",
            "日本語のテキスト",
            &"é".repeat(MAX_DESCRIPTION_CHARS),
        ] {
            assert_eq!(validate_description(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            ("nul\0inside", "U+0000 at character 3"),
            ("bell\x07", "U+0007"),
            ("escape \x1b[31m", "U+001B"),
            ("carriage\rreturn", "U+000D"),
            ("delete\x7f", "U+007F"),
            ("c1 \u{85}", "U+0085"),
            (&"é".repeat(MAX_DESCRIPTION_CHARS + 1), "not 513"),
        ] {
            let error = validate_description(bad).unwrap_err();
            assert_eq!(error.error_code(), "InvalidValue", "{bad:?}");
            assert!(error.external_message().contains(why), "{bad:?}: {error}");
        }
    }
}
