//! Reading Avro binary directly from the bytes, with every length and count
//! checked against the input and the limits before it is trusted.

use crate::program::{Node, NodeId, Program};
use crate::{Limits, Reason};

/// A scalar read from a top-level field, borrowing from the input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Null,
    Bool,
    Int(i64),
    Float(f64),
    /// A string and the offset of its first byte in the datum.
    Str(&'a str, usize),
    Bytes(&'a [u8]),
    Enum(u32),
    /// A record, array or map (already walked and checked).
    Other,
}

pub(crate) struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    items: u64,
    max_items: u64,
    max_depth: u32,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], limits: &Limits) -> Cursor<'a> {
        Cursor {
            buf,
            pos: 0,
            items: 0,
            max_items: limits.max_items,
            max_depth: limits.max_depth,
        }
    }

    #[inline]
    pub fn long(&mut self) -> Result<i64, Reason> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(Reason::AvroTruncated)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(Reason::AvroVarintOverlong);
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(Reason::AvroVarintOverlong);
            }
        }
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    #[inline]
    pub(crate) fn int(&mut self) -> Result<i64, Reason> {
        let v = self.long()?;
        if i32::try_from(v).is_err() {
            return Err(Reason::AvroVarintOverlong);
        }
        Ok(v)
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(Reason::AvroTruncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// A length prefix: never negative, never more than the bytes left.
    #[inline]
    fn len(&mut self) -> Result<usize, Reason> {
        let n = self.long()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n < 0 || n as u64 > left {
            return Err(Reason::AvroInvalidLength);
        }
        Ok(n as usize)
    }

    #[inline]
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Reason> {
        let n = self.len()?;
        self.take(n)
    }

    #[inline]
    pub(crate) fn str(&mut self) -> Result<(&'a str, usize), Reason> {
        let n = self.len()?;
        let start = self.pos;
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| Reason::AvroInvalidUtf8)?;
        Ok((s, start))
    }

    #[inline]
    fn float(&mut self) -> Result<f64, Reason> {
        let b = self.take(4)?;
        let v = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Reason::NumberNotFinite)
        }
    }

    #[inline]
    fn double(&mut self) -> Result<f64, Reason> {
        let b = self.take(8)?;
        let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Reason::NumberNotFinite)
        }
    }

    /// Reads one block header of an array or map: the item count, with the
    /// running total checked against the limit.
    pub(crate) fn block(&mut self) -> Result<u64, Reason> {
        let count = self.long()?;
        let count = if count < 0 {
            // A negative count is followed by the block's size in bytes.
            let size = self.long()?;
            if size < 0 {
                return Err(Reason::AvroInvalidLength);
            }
            count.checked_neg().ok_or(Reason::AvroInvalidLength)?
        } else {
            count
        };
        let count = count as u64;
        self.items = self.items.saturating_add(count);
        if self.items > self.max_items {
            return Err(Reason::AvroTooManyItems);
        }
        Ok(count)
    }

    /// Reads one value of `node`, returning it when it is a scalar.
    pub fn value(&mut self, prog: &Program, node: NodeId, depth: u32) -> Result<Val<'a>, Reason> {
        Ok(match &prog.nodes[node] {
            Node::Null => Val::Null,
            Node::Boolean => match self.take(1)?[0] {
                0 | 1 => Val::Bool,
                _ => return Err(Reason::AvroInvalidBoolean),
            },
            Node::Int | Node::Date => Val::Int(self.int()?),
            Node::Long | Node::TimestampMillis | Node::TimestampMicros => Val::Int(self.long()?),
            Node::Float => Val::Float(self.float()?),
            Node::Double => Val::Float(self.double()?),
            Node::String => {
                let (s, at) = self.str()?;
                Val::Str(s, at)
            }
            Node::Bytes | Node::Decimal { fixed: None, .. } => Val::Bytes(self.bytes()?),
            Node::Fixed(n) | Node::Decimal { fixed: Some(n), .. } => Val::Bytes(self.take(*n)?),
            Node::Enum(symbols) => {
                let i = self.long()?;
                if i < 0 || i as u64 >= symbols.len() as u64 {
                    return Err(Reason::AvroEnumIndex);
                }
                Val::Enum(i as u32)
            }
            Node::Union(branches) => {
                let i = self.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or(Reason::AvroUnionIndex)?;
                self.value(prog, *branch, self.deeper(depth)?)?
            }
            Node::Record { fields, .. } => {
                let depth = self.deeper(depth)?;
                for f in fields {
                    self.value(prog, f.node, depth)?;
                }
                Val::Other
            }
            Node::Array(item) => {
                let depth = self.deeper(depth)?;
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        self.value(prog, *item, depth)?;
                    }
                }
                Val::Other
            }
            Node::Map(value) => {
                let depth = self.deeper(depth)?;
                loop {
                    let n = self.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        self.str()?;
                        self.value(prog, *value, depth)?;
                    }
                }
                Val::Other
            }
        })
    }

    #[inline]
    pub(crate) fn deeper(&self, depth: u32) -> Result<u32, Reason> {
        if depth >= self.max_depth {
            Err(Reason::AvroNestingTooDeep)
        } else {
            Ok(depth + 1)
        }
    }
}
