//! JSON text to a [`serde_json::Value`], refusing what a `Value` would
//! silently change: an object that names a member twice.
//!
//! RFC 8259 leaves duplicate names to the parser, and `serde_json` keeps the
//! last one, so `{"amount": 1, "amount": 1000}` would be published as 1000
//! while the department's own log, a stricter parser or a human reading the
//! request sees 1. Every path that takes a department's JSON (the gateway's
//! bodies, JSON and structured CloudEvents on Kafka, table dumps, `govbus
//! publish`) parses with [`parse`], so such a record is refused with its
//! position instead of being altered.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

/// Why JSON text was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON (syntax, encoding, end of input).
    #[error("line {line} column {column}: {}", self.what())]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's error (its message may quote the input: not shown).
        source: serde_json::Error,
    },
    /// An object names a member twice.
    #[error("line {line} column {column}: {}", self.what())]
    Duplicate {
        /// 1-based line where the second occurrence ends.
        line: usize,
        /// 1-based column where the second occurrence ends.
        column: usize,
        /// The member name, when it has the form of an Avro field name (a
        /// letter or `_`, then letters, digits, `_`; at most 64): anything
        /// else (an ID number used as a name, say) may be data and is not
        /// repeated.
        name: Option<String>,
    },
}

impl JsonError {
    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        match self {
            JsonError::Syntax { line, .. } | JsonError::Duplicate { line, .. } => *line,
        }
    }

    /// 1-based column of the error.
    pub fn column(&self) -> usize {
        match self {
            JsonError::Syntax { column, .. } | JsonError::Duplicate { column, .. } => *column,
        }
    }

    /// What is wrong, without the position (never an excerpt of the input).
    pub fn what(&self) -> String {
        match self {
            JsonError::Syntax { source, .. } => kind(source).to_owned(),
            JsonError::Duplicate { name, .. } => format!(
                "{} appears twice in one object (JSON member names must be unique: which one is meant?)",
                shown(name.as_deref())
            ),
        }
    }
}

fn shown(name: Option<&str>) -> String {
    match name {
        Some(n) => format!("the member `{n}`"),
        None => "a member name".to_owned(),
    }
}

/// serde_json's error without the input excerpt it sometimes quotes.
fn kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data (e.g. invalid UTF-8 or escape)",
        Category::Eof => "unexpected end of input",
    }
}

/// Parses JSON text; an object that names a member twice (at any depth) is
/// an error, as is anything that is not JSON.
pub fn parse(text: &[u8]) -> Result<serde_json::Value, JsonError> {
    let syntax = |e: serde_json::Error| JsonError::Syntax {
        line: e.line(),
        column: e.column(),
        source: e,
    };
    let value: serde_json::Value = serde_json::from_slice(text).map_err(syntax)?;
    // A second pass over text already known to be JSON: it allocates
    // nothing for unique names it can borrow.
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    if let Err(e) = (Unique {
        duplicate: &duplicate,
    })
    .deserialize(&mut de)
    {
        return Err(match duplicate.into_inner() {
            Some(name) => JsonError::Duplicate {
                line: e.line(),
                column: e.column(),
                name,
            },
            None => syntax(e),
        });
    }
    Ok(value)
}

/// Walks a JSON document and fails at the first object that repeats a name.
#[derive(Clone, Copy)]
struct Unique<'a> {
    /// Set when the failure is a duplicate (with the name when it may be shown).
    duplicate: &'a RefCell<Option<Option<String>>>,
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Objects this small are checked by comparing names pairwise.
const SMALL: usize = 16;

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut small: Vec<Cow<'de, str>> = Vec::new();
        let mut large: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let seen = if large.is_empty() {
                small.contains(&name)
            } else {
                large.contains(&name)
            };
            if seen {
                // An Avro name: a letter or `_`, then letters, digits, `_`.
                let plain = name.len() <= 64
                    && name
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                *self.duplicate.borrow_mut() = Some(plain.then(|| name.into_owned()));
                return Err(A::Error::custom("duplicate member name"));
            }
            if small.len() < SMALL {
                small.push(name);
            } else {
                if large.is_empty() {
                    large.extend(small.drain(..));
                }
                large.insert(name);
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, JsonError};

    fn duplicate(text: &str) -> (usize, usize, Option<String>) {
        match parse(text.as_bytes()) {
            Err(JsonError::Duplicate { line, column, name }) => (line, column, name),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn unique_names_parse_as_serde_json_does() {
        for text in [
            r#"{"a": 1, "b": [1, 2.5, "x", null, true], "c": {"a": 1, "b": {"a": 2}}}"#,
            r#"[{"a": 1}, {"a": 2}]"#,
            r#"{"amount": 12345678901234567890.123456789}"#,
            r#"{"\u0061b": 1, "a\u0062c": 2}"#,
            "\"text\"",
            "12",
        ] {
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn a_name_twice_at_any_depth_or_size_is_refused_with_its_position() {
        assert_eq!(
            duplicate(r#"{"amount": 1, "amount": 1000}"#),
            (1, 22, Some("amount".into()))
        );
        assert_eq!(
            duplicate("[{\"a\": 1},\n {\"b\": {\"c\": 1, \"c\": 2}}]").0,
            2
        );
        // Escapes do not hide a repetition: `\u0061` is `a`.
        assert_eq!(duplicate(r#"{"a": 1, "\u0061": 2}"#).2, Some("a".into()));
        // Past the pairwise size, too.
        let many: Vec<String> = (0..40).map(|i| format!("\"f{i}\": {i}")).collect();
        let text = format!("{{{}, \"f7\": 0}}", many.join(", "));
        assert_eq!(duplicate(&text).2, Some("f7".into()));
        // A number's text is not a member name (serde_json's
        // arbitrary-precision numbers pass through a map of their own).
        assert!(parse(br#"{"n": 1.5, "m": 1.5}"#).is_ok());
    }

    #[test]
    fn a_name_that_may_be_data_is_not_repeated_in_the_error() {
        let (_, _, name) = duplicate(r#"{"11010519491231002X": 1, "11010519491231002X": 2}"#);
        assert_eq!(name, None);
        let (_, _, name) = duplicate(r#"{"张建国": 1, "张建国": 2}"#);
        assert_eq!(name, None);
        let e = parse(r#"{"张建国": 1, "张建国": 2}"#.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("张建国"), "{e}");
        assert!(e.contains("a member name appears twice"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_their_position_and_never_quote_the_input() {
        let e = parse(b"{\"a\": 1,\n \"b\": tru}").unwrap_err();
        assert!(matches!(e, JsonError::Syntax { line: 2, .. }), "{e:?}");
        assert!(!e.to_string().contains("tru"), "{e}");
    }
}
