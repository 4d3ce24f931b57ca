//! An Avro schema compiled into a flat node arena that the byte walker and
//! the JSON encoder interpret. Built once per schema version.

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, Name, Schema, UuidSchema};
use serde_json::Value as Json;

/// Index of a node in [`Program::nodes`].
pub(crate) type NodeId = usize;

#[derive(Debug, Clone)]
pub(crate) struct FieldNode {
    pub name: String,
    pub node: NodeId,
    pub default: Option<Json>,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(Vec<String>),
    Date,
    TimestampMillis,
    TimestampMicros,
    /// `fixed` is the size when the decimal is stored in a fixed.
    Decimal {
        precision: u32,
        scale: u32,
        fixed: Option<usize>,
    },
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    Record {
        name: String,
        fields: Vec<FieldNode>,
    },
}

impl Node {
    /// The branch name used by Avro's JSON encoding of unions.
    pub fn type_name(&self) -> &str {
        match self {
            Node::Null => "null",
            Node::Boolean => "boolean",
            Node::Int | Node::Date => "int",
            Node::Long | Node::TimestampMillis | Node::TimestampMicros => "long",
            Node::Float => "float",
            Node::Double => "double",
            Node::Bytes => "bytes",
            Node::String => "string",
            Node::Decimal { fixed: None, .. } => "bytes",
            Node::Fixed(_) | Node::Decimal { fixed: Some(_), .. } => "fixed",
            Node::Enum(_) => "enum",
            Node::Array(_) => "array",
            Node::Map(_) => "map",
            Node::Union(_) => "union",
            Node::Record { name, .. } => name,
        }
    }
}

/// What a node's Avro type does not say about how its value reads as
/// text: the validator reads these like their plain type; the JSON decoder
/// ([`crate::decode`]) formats them by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Plain,
    /// A `local-timestamp-*`: no time zone.
    Local,
    /// `timestamp-nanos` on a long.
    Nanos,
    /// `local-timestamp-nanos` on a long.
    LocalNanos,
    /// `big-decimal` on bytes.
    BigDecimal,
    /// `duration` on a 12-byte fixed.
    Duration,
    /// `uuid` on a string.
    Uuid,
    /// `uuid` on bytes or fixed.
    BinaryUuid,
}

/// A compiled schema: `nodes[root]` is the top-level record.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub nodes: Vec<Node>,
    /// Parallel to `nodes`.
    pub flavors: Vec<Flavor>,
    pub root: NodeId,
}

/// A schema the engine cannot compile (only reachable through a hand-built
/// `Schema`; catalog schemas always compile).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot compile schema: {0}")]
pub struct CompileError(pub String);

struct Compiler {
    nodes: Vec<Node>,
    flavors: Vec<Flavor>,
    named: HashMap<String, NodeId>,
}

impl Program {
    pub fn compile(schema: &Schema) -> Result<Program, CompileError> {
        let mut c = Compiler {
            nodes: Vec::new(),
            flavors: Vec::new(),
            named: HashMap::new(),
        };
        let root = c.compile(schema, None)?;
        Ok(Program {
            nodes: c.nodes,
            flavors: c.flavors,
            root,
        })
    }
}

fn fullname(name: &Name) -> String {
    name.fullname(None)
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.flavors.push(Flavor::Plain);
        self.nodes.len() - 1
    }

    fn flavored(&mut self, node: Node, flavor: Flavor) -> NodeId {
        let id = self.push(node);
        self.flavors[id] = flavor;
        id
    }

    fn named(&mut self, name: &Name, node: Node) -> NodeId {
        let id = self.push(node);
        self.named.insert(fullname(name), id);
        id
    }

    fn compile(&mut self, schema: &Schema, ns: Option<&str>) -> Result<NodeId, CompileError> {
        Ok(match schema {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long | Schema::TimeMicros => self.push(Node::Long),
            Schema::TimestampNanos => self.flavored(Node::Long, Flavor::Nanos),
            Schema::LocalTimestampNanos => self.flavored(Node::Long, Flavor::LocalNanos),
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes => self.push(Node::Bytes),
            Schema::BigDecimal => self.flavored(Node::Bytes, Flavor::BigDecimal),
            Schema::String => self.push(Node::String),
            Schema::Uuid(UuidSchema::String) => self.flavored(Node::String, Flavor::Uuid),
            // Read as a string by the validator, as before; the JSON decoder
            // leaves such a schema to the generic decoder.
            Schema::Uuid(_) => self.flavored(Node::String, Flavor::BinaryUuid),
            Schema::Date => self.push(Node::Date),
            Schema::TimestampMillis => self.push(Node::TimestampMillis),
            Schema::LocalTimestampMillis => self.flavored(Node::TimestampMillis, Flavor::Local),
            Schema::TimestampMicros => self.push(Node::TimestampMicros),
            Schema::LocalTimestampMicros => self.flavored(Node::TimestampMicros, Flavor::Local),
            Schema::Fixed(f) => self.named(&f.name, Node::Fixed(f.size)),
            Schema::Duration(f) => {
                let id = self.named(&f.name, Node::Fixed(f.size));
                self.flavors[id] = Flavor::Duration;
                id
            }
            Schema::Enum(e) => self.named(&e.name, Node::Enum(e.symbols.clone())),
            Schema::Decimal(d) => {
                let precision = u32::try_from(d.precision)
                    .map_err(|_| CompileError("decimal precision too large".into()))?;
                let scale = u32::try_from(d.scale)
                    .map_err(|_| CompileError("decimal scale too large".into()))?;
                if scale > govbus_catalog::MAX_SCALE {
                    return Err(CompileError(format!(
                        "decimal scale {scale} exceeds {}",
                        govbus_catalog::MAX_SCALE
                    )));
                }
                match &d.inner {
                    InnerDecimalSchema::Bytes => self.push(Node::Decimal {
                        precision,
                        scale,
                        fixed: None,
                    }),
                    InnerDecimalSchema::Fixed(f) => self.named(
                        &f.name,
                        Node::Decimal {
                            precision,
                            scale,
                            fixed: Some(f.size),
                        },
                    ),
                }
            }
            Schema::Array(a) => {
                let id = self.push(Node::Null);
                let item = self.compile(&a.items, ns)?;
                self.nodes[id] = Node::Array(item);
                id
            }
            Schema::Map(m) => {
                let id = self.push(Node::Null);
                let value = self.compile(&m.types, ns)?;
                self.nodes[id] = Node::Map(value);
                id
            }
            Schema::Union(u) => {
                let id = self.push(Node::Null);
                let branches = u
                    .variants()
                    .iter()
                    .map(|v| self.compile(v, ns))
                    .collect::<Result<Vec<_>, _>>()?;
                self.nodes[id] = Node::Union(branches);
                id
            }
            Schema::Record(r) => {
                let name = fullname(&r.name);
                // Registered before the fields so that a recursive reference resolves.
                let id = self.named(
                    &r.name,
                    Node::Record {
                        name: name.clone(),
                        fields: Vec::new(),
                    },
                );
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let node = self.compile(&f.schema, r.name.namespace())?;
                    fields.push(FieldNode {
                        name: f.name.clone(),
                        node,
                        default: f.default.clone(),
                    });
                }
                self.nodes[id] = Node::Record { name, fields };
                id
            }
            Schema::Ref { name } => {
                let full = fullname(name);
                let found = self
                    .named
                    .get(&full)
                    .or_else(|| ns.and_then(|ns| self.named.get(&format!("{ns}.{}", name.name()))));
                *found.ok_or_else(|| CompileError(format!("unresolved reference to `{full}`")))?
            }
        })
    }
}
