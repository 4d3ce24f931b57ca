//! Decoding PostgreSQL's `pgoutput` logical replication messages (protocol
//! version 1, text tuple format), as returned by
//! `pg_logical_slot_peek_binary_changes`. Bounds-checked: a short or odd
//! message is an error, never a panic.

use std::collections::HashMap;

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    /// The value in PostgreSQL's text output format.
    Text(String),
}

/// A table's description, sent before its first change in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Schema.
    pub namespace: String,
    /// Table.
    pub name: String,
    /// Column names in order, and whether each is part of the replica identity.
    pub columns: Vec<(String, bool)>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Transaction start.
    Begin {
        /// Transaction id.
        xid: u32,
    },
    /// Transaction end.
    Commit {
        /// LSN just past the commit record: where to resume after it.
        end_lsn: u64,
    },
    /// A table description.
    Relation(u32, Relation),
    /// A new row.
    Insert {
        /// Relation id.
        rel: u32,
        /// The row.
        new: Vec<Value>,
    },
    /// A changed row.
    Update {
        /// Relation id.
        rel: u32,
        /// The old key (or whole old row), when the key changed or identity is FULL.
        old: Option<Vec<Value>>,
        /// The row after.
        new: Vec<Value>,
    },
    /// A removed row.
    Delete {
        /// Relation id.
        rel: u32,
        /// The old key (or whole old row).
        old: Vec<Value>,
    },
    /// A TRUNCATE of these relations.
    Truncate(Vec<u32>),
    /// A logical message (`pg_logical_emit_message`).
    Message {
        /// Its prefix.
        prefix: String,
    },
    /// Anything else (origin, type).
    Other(u8),
}

/// Why a message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message `{kind}` is malformed at byte {at}")]
pub struct DecodeError {
    /// The message type byte.
    pub kind: char,
    /// Where decoding stopped.
    pub at: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    kind: char,
}

impl<'a> Cursor<'a> {
    fn err(&self) -> DecodeError {
        DecodeError {
            kind: self.kind,
            at: self.at,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| self.err())?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|c| *c == 0)
            .ok_or_else(|| self.err())?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(usize::from(n).min(1600));
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                _ => return Err(self.err()),
            });
        }
        Ok(out)
    }
}

/// Decodes one message.
pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
    let kind = *b.first().ok_or(DecodeError { kind: '?', at: 0 })?;
    let mut c = Cursor {
        b,
        at: 1,
        kind: kind as char,
    };
    Ok(match kind {
        b'B' => {
            let _final_lsn = c.u64()?;
            let _ts = c.u64()?;
            Message::Begin { xid: c.u32()? }
        }
        b'C' => {
            let _flags = c.u8()?;
            let _commit_lsn = c.u64()?;
            let end_lsn = c.u64()?;
            Message::Commit { end_lsn }
        }
        b'R' => {
            let id = c.u32()?;
            let namespace = c.cstr()?;
            let name = c.cstr()?;
            let _identity = c.u8()?;
            let n = c.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n).min(1600));
            for _ in 0..n {
                let flags = c.u8()?;
                let col = c.cstr()?;
                let _oid = c.u32()?;
                let _typmod = c.u32()?;
                columns.push((col, flags & 1 == 1));
            }
            Message::Relation(
                id,
                Relation {
                    namespace,
                    name,
                    columns,
                },
            )
        }
        b'I' => {
            let rel = c.u32()?;
            if c.u8()? != b'N' {
                return Err(c.err());
            }
            Message::Insert {
                rel,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let rel = c.u32()?;
            let mut tag = c.u8()?;
            let old = if tag == b'K' || tag == b'O' {
                let t = c.tuple()?;
                tag = c.u8()?;
                Some(t)
            } else {
                None
            };
            if tag != b'N' {
                return Err(c.err());
            }
            Message::Update {
                rel,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let rel = c.u32()?;
            let tag = c.u8()?;
            if tag != b'K' && tag != b'O' {
                return Err(c.err());
            }
            Message::Delete {
                rel,
                old: c.tuple()?,
            }
        }
        b'T' => {
            let n = c.u32()?;
            let _options = c.u8()?;
            let mut rels = Vec::new();
            for _ in 0..n.min(65_536) {
                rels.push(c.u32()?);
            }
            Message::Truncate(rels)
        }
        b'M' => {
            let _flags = c.u8()?;
            let _lsn = c.u64()?;
            Message::Message { prefix: c.cstr()? }
        }
        other => Message::Other(other),
    })
}

/// Relations seen in the current decoding session.
pub type Relations = HashMap<u32, Relation>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_insert_and_rejects_truncated_input() {
        let mut m = vec![b'I'];
        m.extend(7u32.to_be_bytes());
        m.push(b'N');
        m.extend(2u16.to_be_bytes());
        m.push(b't');
        m.extend(2u32.to_be_bytes());
        m.extend(b"42");
        m.push(b'n');
        assert_eq!(
            decode(&m),
            Ok(Message::Insert {
                rel: 7,
                new: vec![Value::Text("42".into()), Value::Null]
            })
        );
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err(), "{cut}");
        }
        let mut huge = vec![b'I'];
        huge.extend(7u32.to_be_bytes());
        huge.push(b'N');
        huge.extend(1u16.to_be_bytes());
        huge.push(b't');
        huge.extend(u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_err());
    }
}
