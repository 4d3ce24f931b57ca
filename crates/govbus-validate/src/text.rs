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
use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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
    /// An object names a member twice. The name is not repeated: a member
    /// name may be data (an Avro map's keys are: ID numbers, passport
    /// numbers, user names), and the position finds it.
    #[error("line {line} column {column}: {}", self.what())]
    Duplicate {
        /// 1-based line of the second occurrence's closing quote.
        line: usize,
        /// 1-based column (bytes) of its closing quote (an escaped name:
        /// at or just after it).
        column: usize,
    },
    /// A member name `serde_json` keeps for itself
    /// (`$serde_json::private::…`): it would turn the member's string into
    /// a number or re-parse it as JSON — unchecked — instead of keeping it.
    #[error("line {line} column {column}: {}", self.what())]
    Reserved {
        /// 1-based line of the name.
        line: usize,
        /// 1-based column of the name.
        column: usize,
    },
}

impl JsonError {
    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        match self {
            JsonError::Syntax { line, .. }
            | JsonError::Duplicate { line, .. }
            | JsonError::Reserved { line, .. } => *line,
        }
    }

    /// 1-based column of the error.
    pub fn column(&self) -> usize {
        match self {
            JsonError::Syntax { column, .. }
            | JsonError::Duplicate { column, .. }
            | JsonError::Reserved { column, .. } => *column,
        }
    }

    /// What is wrong, without the position (never an excerpt of the input).
    pub fn what(&self) -> String {
        match self {
            JsonError::Syntax { source, .. } => kind(source).to_owned(),
            JsonError::Duplicate { .. } => "a member name appears twice in one object (JSON member names must be unique: which one is meant?)".to_owned(),
            JsonError::Reserved { .. } => "a member name begins with `$serde_json::private::`, which the parser reserves".to_owned(),
        }
    }
}

/// serde_json's error without the input excerpt it sometimes quotes.
fn kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        // Valid JSON, but deeper than serde_json's limit (a `Syntax` error
        // to serde_json): said as such, not as a syntax error.
        Category::Syntax if e.to_string().starts_with("recursion limit exceeded") => {
            "nested more than 127 levels deep"
        }
        Category::Syntax => "syntax error (or invalid UTF-8, or an invalid escape)",
        Category::Data => "a number that does not parse",
        Category::Eof => "unexpected end of input",
    }
}

/// Parses JSON text; an object that names a member twice (at any depth) is
/// an error, as is a member name serde_json reserves, as is anything that
/// is not JSON. One pass, building the same `Value` serde_json builds.
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    let parsed = Build {
        text,
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    // The first problem in text order is the one reported.
    parsed.map_err(|e| {
        let at = |end: Option<usize>| match end {
            // Just after the name's closing quote (serde_json's own position
            // has moved past the whitespace that follows).
            Some(end) => position(text, end),
            None => (e.line(), e.column()),
        };
        match found.get() {
            Some((Found::Duplicate, end)) => {
                let (line, column) = at(end);
                JsonError::Duplicate { line, column }
            }
            Some((Found::Reserved, end)) => {
                let (line, column) = at(end);
                JsonError::Reserved { line, column }
            }
            None => JsonError::Syntax {
                line: e.line(),
                column: e.column(),
                source: e,
            },
        }
    })
}

/// 1-based line and column (in bytes, as serde_json counts) of the byte
/// before `end`.
fn position(text: &[u8], end: usize) -> (usize, usize) {
    let before = &text[..end.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
    (line, column)
}

/// What the check found.
#[derive(Clone, Copy)]
enum Found {
    Duplicate,
    Reserved,
}

/// serde_json's own member names (`Number` under `arbitrary_precision`,
/// `RawValue` under `raw_value`, both on in this workspace's build).
const RESERVED: &str = "$serde_json::private::";
/// The one serde_json hands numbers over under (`arbitrary_precision`).
const NUMBER: &str = "$serde_json::private::Number";

/// Builds a `Value` as serde_json's own visitor does, failing at the first
/// object that repeats a name or uses a reserved one.
#[derive(Clone, Copy)]
struct Build<'a, 'de> {
    /// The input: a name borrowed from it is the sender's, not serde_json's.
    text: &'de [u8],
    /// What the failure was, when it is one of ours.
    found: &'a Cell<Option<(Found, Option<usize>)>>,
}

impl<'de> DeserializeSeed<'de> for Build<'_, 'de> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name (borrowed from the input when it has no escapes), and
/// whether the sender wrote it: serde_json hands its own `Number` key over
/// as a `'static` string, outside the input; a name the sender wrote is
/// inside it, or was unescaped into a buffer.
struct Name<'de> {
    name: Cow<'de, str>,
    from_input: bool,
    /// Where its closing quote ends in the input, when borrowed from it.
    end: Option<usize>,
}

/// Reads a [`Name`] of `text`.
struct NameOf<'de>(&'de [u8]);

impl<'de> DeserializeSeed<'de> for NameOf<'de> {
    type Value = Name<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Name<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameOf<'de> {
    type Value = Name<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
        let from_input = self.0.as_ptr_range().contains(&v.as_ptr());
        let end = from_input.then(|| v.as_ptr() as usize - self.0.as_ptr() as usize + v.len() + 1);
        Ok(Name {
            name: Cow::Borrowed(v),
            from_input,
            end,
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name {
            name: Cow::Owned(v.to_owned()),
            from_input: true,
            end: None,
        })
    }
    fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
        Ok(Name {
            name: Cow::Owned(v),
            from_input: true,
            end: None,
        })
    }
}

impl<'de> Visitor<'de> for Build<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        let mut first = true;
        while let Some(Name {
            name,
            from_input,
            end,
        }) = map.next_key_seed(NameOf(self.text))?
        {
            if !from_input && first && name == NUMBER {
                // serde_json's own number: its text follows.
                let text: Cow<'de, str> = map.next_value()?;
                let n: Number = text.parse().map_err(A::Error::custom)?;
                return Ok(Value::Number(n));
            }
            first = false;
            if name.starts_with(RESERVED) {
                self.found.set(Some((Found::Reserved, end)));
                return Err(A::Error::custom("reserved member name"));
            }
            match object.entry(name.into_owned()) {
                serde_json::map::Entry::Occupied(_) => {
                    self.found.set(Some((Found::Duplicate, end)));
                    return Err(A::Error::custom("duplicate member name"));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, JsonError};

    fn duplicate(text: &str) -> (usize, usize) {
        match parse(text.as_bytes()) {
            Err(JsonError::Duplicate { line, column }) => (line, column),
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
            r#"{"n": 1.5, "m": -0.0, "k": 1e400}"#,
            "\"text\"",
            "12",
        ] {
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
        // Many unique names, past the pairwise size.
        let many: Vec<String> = (0..100).map(|i| format!("\"f{i}\": {i}")).collect();
        assert!(parse(format!("{{{}}}", many.join(", ")).as_bytes()).is_ok());
    }

    #[test]
    fn a_name_twice_at_any_depth_position_or_size_is_refused_with_its_position() {
        assert_eq!(duplicate(r#"{"amount": 1, "amount": 1000}"#), (1, 22));
        assert_eq!(
            duplicate("[{\"a\": 1},\n {\"b\": {\"c\": 1, \"c\": 2}}]").0,
            2
        );
        // Escapes do not hide a repetition: `\u0061` is `a`.
        duplicate(r#"{"a": 1, "\u0061": 2}"#);
        // Whichever member of a large object is repeated, after whichever.
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        for first in 0..40 {
            for again in [first + 1, 39, 40] {
                let mut members: Vec<String> =
                    names.iter().map(|n| format!("\"{n}\": 0")).collect();
                members.insert(again.min(members.len()), format!("\"f{first}\": 1"));
                let text = format!("{{{}}}", members.join(", "));
                duplicate(&text);
            }
        }
    }

    #[test]
    fn a_name_is_never_repeated_in_the_error() {
        for text in [
            r#"{"11010519491231002X": 1, "11010519491231002X": 2}"#,
            r#"{"E12345678": 1, "E12345678": 2}"#,
            r#"{"张建国": 1, "张建国": 2}"#,
        ] {
            let e = parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("a member name appears twice"), "{e}");
            for name in ["11010519491231002X", "E12345678", "张建国"] {
                assert!(!e.contains(name), "{e}");
            }
        }
    }

    #[test]
    fn serde_json_s_own_member_names_are_refused_from_the_input() {
        for text in [
            r#"{"x": {"$serde_json::private::RawValue": "{\"amount\":1,\"amount\":1000}"}}"#,
            r#"{"x": {"$serde_json::private::Number": "1000"}}"#,
            r#"{"x": {"\u0024serde_json::private::Number": "1000"}}"#,
            r#"[{"$serde_json::private::anything": 1}]"#,
        ] {
            match parse(text.as_bytes()) {
                Err(JsonError::Reserved { .. }) => {}
                other => panic!("{text}: {other:?}"),
            }
        }
        // The parser's own number representation still passes.
        assert!(parse(br#"{"amount": 1000, "rate": 0.1}"#).is_ok());
    }

    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever JSON without repeated names: the value serde_json builds.
        #[test]
        fn any_json_without_repeats_parses_as_serde_json_parses_it(v in json()) {
            for text in [v.to_string(), serde_json::to_string_pretty(&v).unwrap()] {
                let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
                proptest::prop_assert_eq!(parse(text.as_bytes()).unwrap(), theirs);
            }
        }
    }

    #[test]
    fn the_position_is_the_repeated_name_s_and_the_first_problem_wins() {
        assert_eq!(duplicate("{\"a\":1,\"a\"\n:2}"), (1, 10));
        assert_eq!(duplicate("{\"a\":1,\n  \"a\" : 2}"), (2, 5));
        // A duplicate before a syntax error or trailing garbage: the duplicate.
        duplicate(r#"{"a":1,"a":"#);
        duplicate(r#"{"a":1,"a":2} garbage"#);
        // A syntax error before a duplicate: the syntax error.
        assert!(matches!(
            parse(br#"{"a":tru,"a":2}"#),
            Err(JsonError::Syntax { .. })
        ));
    }

    #[test]
    fn json_nested_too_deep_is_said_so() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("nested more than 127 levels deep"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_their_position_and_never_quote_the_input() {
        let e = parse(b"{\"a\": 1,\n \"b\": tru}").unwrap_err();
        assert!(matches!(e, JsonError::Syntax { line: 2, .. }), "{e:?}");
        assert!(!e.to_string().contains("tru"), "{e}");
    }
}
