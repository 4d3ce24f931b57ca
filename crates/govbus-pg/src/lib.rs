//! PostgreSQL plumbing shared by the PostgreSQL sink and change capture.
//!
//! [`describe`]: a PostgreSQL error as the operator reads it in a log —
//! `tokio_postgres` alone displays every server error as "db error" — and
//! without the record values a server message can carry.

/// A PostgreSQL error as the operator needs it, without the record values
/// a message can carry: `tokio_postgres` displays every server error as
/// "db error". A server error gives its SQLSTATE and the schema, table,
/// column, data type and constraint it names, and its message only where a
/// message carries no value: not for a data exception (class 22: `invalid
/// input syntax for type date: "…"` quotes the value, and PostgreSQL does
/// not escape a quote inside it; an encoding error prints its bytes) nor
/// for an exception raised by a trigger or function (P0…, or any code
/// raised in PL/pgSQL — `USING ERRCODE = 'check_violation'` — : its text is
/// the function author's, `RAISE EXCEPTION 'bad id %', NEW.id`); those are in
/// the server's own log. Elsewhere everything from the first double quote
/// to the last is replaced by `"…"` (identifiers are in the fields).
/// Never `DETAIL`, which quotes key values. Any other error gives its
/// chain of causes (a refused connection, a closed one).
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        let mut out = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        return out;
    };
    let code = db.code().code();
    // Raised in PL/pgSQL (a trigger or function of the subscriber's): its
    // message is the function's own text, whatever code it chose.
    let in_plpgsql = db.where_().is_some_and(|w| w.contains("PL/pgSQL"));
    let message = if code.starts_with("22") {
        "a value does not fit (data exception; the value is not logged)".to_owned()
    } else if code.starts_with("P0") || in_plpgsql {
        "raised by a trigger or function (its message is in the PostgreSQL server log)".to_owned()
    } else {
        let m = db.message();
        match (m.find('"'), m.rfind('"')) {
            (Some(a), Some(b)) if a < b => format!("{}\"…\"{}", &m[..a], &m[b + 1..]),
            _ => m.to_owned(),
        }
    };
    let mut out = format!("{} {code}: {message}", db.severity());
    for (name, value) in [
        ("schema", db.schema()),
        ("table", db.table()),
        ("column", db.column()),
        ("datatype", db.datatype()),
        ("constraint", db.constraint()),
    ] {
        if let Some(v) = value {
            out.push_str(&format!("; {name} {v}"));
        }
    }
    out
}
