//! Size-capped reads of operator-supplied files (configuration, blocklist,
//! web configuration, certificates) and length-capped error text.
//!
//! `std::fs::read_to_string` reads until EOF: pointed at `/dev/zero` or a
//! multi-gigabyte file it grows the heap until the kernel kills us. These
//! helpers stop one byte past the cap and say so, in one line.

use std::{fs::File, io::Read, path::Path};

/// Largest configuration file edgewatch reads (YAML).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest blocklist file: the XDP tries hold 262,144 prefixes each, and a
/// line is at most ~50 bytes with its comment; 32 MiB leaves room for long
/// comments without letting `/dev/zero` in.
pub const MAX_BLOCKLIST_BYTES: u64 = 32 << 20;
/// Largest PEM file (certificate chain, key, client CA bundle).
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// Longest single problem in an error line; the rest is cut with "...".
pub const MAX_MESSAGE_CHARS: usize = 240;

/// Largest flow-collection nesting (`[[[...]]]`, `{{...}}`) accepted in a
/// configuration file: edgewatch's formats need 2. The YAML parser's cost grows with the square of the
/// depth, so deep nesting is refused before parsing.
pub const MAX_FLOW_DEPTH: usize = 64;

/// An error if flow collections nest deeper than [`MAX_FLOW_DEPTH`].
/// Brackets inside quotes and comments are skipped; a stray bracket in a
/// plain scalar only makes the count larger, never smaller.
pub fn flow_depth_error(text: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut prev = '\n';
    for c in text.chars() {
        if comment {
            if c == '\n' {
                comment = false;
            }
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' => quote = Some(c),
                '#' if prev.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(format!(
                            "collections nested more than {MAX_FLOW_DEPTH} deep"
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    None
}

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {max} bytes (the limit for this file)")]
    TooLarge { max: u64 },
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// Parses a YAML configuration text strictly, for every file edgewatch
/// reads (its configuration and the web configuration): deep nesting is
/// refused before parsing, an empty text is `T::default()`, every unknown
/// key is reported with its path, then the first type error (named by its
/// path when serde_yaml_ng's message does not already name it; its
/// " at line L column C" stays, it helps).
pub fn parse_yaml<T: serde::de::DeserializeOwned + Default>(text: &str) -> Result<T, Vec<String>> {
    if let Some(e) = flow_depth_error(text) {
        return Err(vec![e]);
    }
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let result: Result<T, _> = {
        let de = serde_path_to_error::Deserializer::new(de, &mut track);
        serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
    };
    let mut errors: Vec<String> = unknown
        .into_iter()
        .map(|p| format!("{p}: unknown key"))
        .collect();
    match result {
        Ok(value) if errors.is_empty() => Ok(value),
        Ok(_) => Err(errors),
        Err(e) => {
            let path = track.path().to_string();
            let msg = e.to_string();
            if path.is_empty() || path == "." || msg.starts_with(&path) {
                errors.push(msg);
            } else {
                errors.push(format!("{path}: {msg}"));
            }
            Err(errors)
        }
    }
}

/// Reads at most `max` bytes of UTF-8 text; a longer file (or an endless
/// one such as `/dev/zero`) is an error after reading `max + 1` bytes.
pub fn read_to_string(path: &Path, max: u64) -> Result<String, ReadError> {
    let file = File::open(path)?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    String::from_utf8(buf).map_err(|_| ReadError::NotUtf8)
}

/// Reads at most `max` bytes; see [`read_to_string`].
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path)?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(buf)
}

/// `s` made safe for one log or error line: control characters (newlines
/// included) escaped, and cut to `max` characters with the number of
/// characters left out.
pub fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    let mut total = 0;
    for c in s.chars() {
        total += 1;
        if shown >= max {
            continue;
        }
        shown += 1;
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if total > shown {
        out.push_str(&format!("... ({} more characters)", total - shown));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_stops_at_the_cap() {
        let err = read_to_string(Path::new("/dev/zero"), 4096).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { max: 4096 }), "{err}");
        assert_eq!(
            err.to_string(),
            "larger than 4096 bytes (the limit for this file)"
        );
    }

    #[test]
    fn exact_size_is_fine() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"abcd").unwrap();
        assert_eq!(read_to_string(f.path(), 4).unwrap(), "abcd");
        assert!(read_to_string(f.path(), 3).is_err());
        assert_eq!(read(f.path(), 4).unwrap(), b"abcd");
    }

    #[test]
    fn binary_is_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_to_string(f.path(), 10),
            Err(ReadError::NotUtf8)
        ));
    }

    #[test]
    fn one_line_escapes_and_cuts() {
        assert_eq!(one_line("a\nb", 10), "a\\nb");
        assert_eq!(one_line("abcdef", 3), "abc... (3 more characters)");
        assert_eq!(one_line("éé", 1), "é... (1 more characters)");
    }
}
