//! Replays at the PostgreSQL sink, the one place where a replay could change
//! a subscriber's data: the same event again 1 second and 30 days later,
//! the same event id with different content, source versions out of order,
//! and a late update after a delete. The rule in every case: a row changes
//! only for a higher source version than it has (or than its tombstone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use govbus_catalog::Catalog;
use govbus_sink::event::Delivery;
use govbus_sink::sinks::postgres::PgSink;
use govbus_testkit::PgSchema;
use serde_json::{json, Map};

const DAY_MS: i64 = 86_400_000;

fn catalog() -> Catalog {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    Catalog::load(&dir).unwrap()
}

fn delivery(id: &str, version: u64, office: &str, op: &str, at_ms: i64) -> Delivery {
    let data = (op != "delete").then(|| {
        let v = json!({
            "deceased_id_number": "11010519491231002X",
            "death_date": "2026-03-05",
            "registering_office": office,
            "registered_at": "2026-03-06T09:00:00.000Z",
        });
        v.as_object().cloned().unwrap_or_else(Map::new)
    });
    Delivery {
        id: id.into(),
        source: "/departments/civil_affairs".into(),
        dataset: "civil_affairs.death_registration".into(),
        subject: "DR-2026-00000001".into(),
        time: govbus_catalog::time::format_rfc3339_millis(at_ms),
        op: op.into(),
        source_version: version,
        data,
        partition: 0,
        offset: 0,
        timestamp_ms: at_ms,
        traceparent: None,
    }
}

/// A throwaway schema, and a PostgreSQL sink of the death registrations
/// under `hrss_deaths_pension_stop` in it.
async fn deaths_table() -> (PgSchema, String, PgSink) {
    let schema = PgSchema::create().await.unwrap();
    let catalog = catalog();
    let sub = catalog.subscription("hrss_deaths_pension_stop").unwrap();
    let ds = catalog.dataset(&sub.dataset).unwrap();
    let table = format!("{}.deaths", schema.name());
    let sink = PgSink::open(
        &schema.conninfo(),
        &table,
        sub,
        ds,
        "data.civil_affairs.death_registration",
    )
    .await
    .unwrap();
    (schema, table, sink)
}

#[tokio::test]
async fn a_row_changes_only_for_a_higher_source_version() {
    let (schema, table, mut sink) = deaths_table().await;
    let client = schema.client().await.unwrap();
    let row = || async {
        let r = client
            .query_opt(&format!("SELECT _govbus_source_version, _govbus_event_id, registering_office FROM {table}"), &[])
            .await
            .unwrap();
        r.map(|r| {
            (
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
            )
        })
    };
    let now = 1_795_996_800_000;
    let mut offset = 0;
    let mut apply = async |e: Delivery| {
        offset += 1;
        sink.apply(&[e], &[(0, offset)], || async { Ok(()) })
            .await
            .unwrap();
    };

    apply(delivery("ev-2", 2, "福田区民政局", "create", now)).await;
    assert_eq!(row().await, Some((2, "ev-2".into(), "福田区民政局".into())));
    // The same event again, 1 second and 30 days later: nothing changes.
    apply(delivery("ev-2", 2, "福田区民政局", "create", now + 1_000)).await;
    apply(delivery(
        "ev-2",
        2,
        "福田区民政局",
        "create",
        now + 30 * DAY_MS,
    ))
    .await;
    assert_eq!(row().await, Some((2, "ev-2".into(), "福田区民政局".into())));
    // The same event id with different content (same version): refused; a
    // change needs a higher version.
    apply(delivery("ev-2", 2, "罗湖区民政局", "update", now + 2_000)).await;
    assert_eq!(row().await, Some((2, "ev-2".into(), "福田区民政局".into())));
    // Versions out of order: 1 after 2 is ignored, 3 applies.
    apply(delivery("ev-1", 1, "南山区民政局", "create", now)).await;
    assert_eq!(row().await, Some((2, "ev-2".into(), "福田区民政局".into())));
    apply(delivery("ev-3", 3, "南山区民政局", "update", now)).await;
    assert_eq!(row().await, Some((3, "ev-3".into(), "南山区民政局".into())));
    // A delete at 5, then a late update at 4: the row stays deleted; 6 brings it back.
    apply(delivery("ev-5", 5, "", "delete", now)).await;
    assert_eq!(row().await, None);
    apply(delivery("ev-4", 4, "宝安区民政局", "update", now)).await;
    assert_eq!(
        row().await,
        None,
        "a late update does not resurrect a deleted row"
    );
    apply(delivery("ev-6", 6, "宝安区民政局", "create", now)).await;
    assert_eq!(row().await, Some((6, "ev-6".into(), "宝安区民政局".into())));
}

/// The operator reads why the database refused a batch — `tokio_postgres`
/// alone says "db error" — and never a value the message quotes.
#[tokio::test]
async fn a_database_refusal_is_described_without_the_values_it_quotes() {
    use govbus_sink::sinks::postgres::describe;
    let pg = PgSchema::create().await.unwrap();
    let client = pg.client().await.unwrap();
    let e = client
        .query_one("SELECT '1949-13-45 11010519491231002X'::date", &[])
        .await
        .unwrap_err();
    let text = describe(&e);
    assert!(text.contains("22007") || text.contains("22008"), "{text}");
    assert!(!text.contains("1949") && !text.contains("110105"), "{text}");
    // A quote inside the value (PostgreSQL does not escape it).
    let e = client
        .query_one(r#"SELECT 'x"11010519491231002X"y'::numeric"#, &[])
        .await
        .unwrap_err();
    let text = describe(&e);
    assert!(text.contains("22P02") && !text.contains("110105"), "{text}");
    // A trigger's own message can quote anything.
    client
        .batch_execute(&format!(
            r#"CREATE FUNCTION "{s}".f() RETURNS void LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'bad id %', '11010519491231002X'; END $$;"#,
            s = pg.name()
        ))
        .await
        .unwrap();
    let e = client
        .query_one(&format!(r#"SELECT "{}".f()"#, pg.name()), &[])
        .await
        .unwrap_err();
    let text = describe(&e);
    assert!(text.contains("P0001") && !text.contains("110105"), "{text}");
    // The same with a code of its own choosing.
    client
        .batch_execute(&format!(
            r#"CREATE FUNCTION "{s}".g() RETURNS void LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'bad id %', '11010519491231002X' USING ERRCODE = 'check_violation'; END $$;"#,
            s = pg.name()
        ))
        .await
        .unwrap();
    let e = client
        .query_one(&format!(r#"SELECT "{}".g()"#, pg.name()), &[])
        .await
        .unwrap_err();
    let text = describe(&e);
    assert!(text.contains("23514") && !text.contains("110105"), "{text}");

    let s = pg.name();
    client
        .batch_execute(&format!(
            r#"CREATE TABLE "{s}".t (id text PRIMARY KEY);
               INSERT INTO "{s}".t VALUES ('11010519491231002X');"#
        ))
        .await
        .unwrap();
    let e = client
        .execute(
            &format!(r#"INSERT INTO "{s}".t VALUES ('11010519491231002X')"#),
            &[],
        )
        .await
        .unwrap_err();
    let text = describe(&e);
    assert!(
        text.contains("23505") && text.contains("constraint t_pkey"),
        "{text}"
    );
    assert!(!text.contains("110105"), "{text}");
}

/// The validator accepts text with a NUL character, which PostgreSQL stores
/// in neither `text` nor `jsonb`: applied, such a record fails its batch on
/// every attempt and the subscription stops for good. The sink names it
/// first (`unstorable`), and the delivery loop dead-letters it before the
/// batch is applied; the rest of the stream goes on.
#[tokio::test]
async fn a_value_the_table_cannot_store_is_named_before_it_is_applied() {
    let (schema, table, mut sink) = deaths_table().await;
    let now = 1_795_996_800_000;
    let bad = delivery("e-nul", 1, "朝阳区\u{0}民政局", "update", now);
    let why = sink.unstorable(&bad).expect("named as unstorable");
    assert!(
        why.contains("registering_office") && !why.contains("朝阳"),
        "{why}"
    );
    // What dead-lettering it avoids: the table refuses it, every time.
    for _ in 0..2 {
        let refused = sink.apply(std::slice::from_ref(&bad), &[(0, 1)], || async { Ok(()) });
        assert!(refused.await.is_err());
    }
    let mut nul_key = delivery("e-key", 1, "朝阳区民政局", "update", now);
    nul_key.subject = "DR-2026\u{0}1".into();
    assert!(sink.unstorable(&nul_key).is_some());
    let good = delivery("e-ok", 2, "朝阳区民政局", "update", now);
    assert!(sink.unstorable(&good).is_none());
    sink.apply(&[good], &[(0, 2)], || async { Ok(()) })
        .await
        .unwrap();
    let client = schema.client().await.unwrap();
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// New keys are copied into the table (COPY's text format) and keys it
/// holds take the upsert: whichever way a row goes, every value arrives as
/// sent — tabs, newlines, carriage returns, backslashes, a literal `\N`,
/// the empty string — and so do the row's event id, op, time, version and
/// policy. A batch mixes both ways and repeats a key.
#[tokio::test]
async fn every_value_arrives_as_sent_whether_the_row_is_new_or_held() {
    let (schema, table, mut sink) = deaths_table().await;
    let client = schema.client().await.unwrap();
    let now = 1_795_996_800_000;
    let odd = [
        "福田区\t民政局",
        "line\nbreak",
        "carriage\rreturn",
        r"back\slash",
        r"\N",
        "",
        r"\.",
        "\\\n\t\r\\t",
        "引号 \" ' 😀",
        "\n",
    ];
    let event = |k: usize, version: u64, office: &str| {
        let mut e = delivery(
            &format!("ev-{k}-{version}"),
            version,
            office,
            "update",
            now + k as i64,
        );
        e.subject = format!("DR-2026-{k:08}");
        e
    };
    let rows = || async {
        let rows = client
            .query(
                &format!(
                    "SELECT _govbus_subject, registering_office, _govbus_source_version, _govbus_event_id, \
                     _govbus_op, (extract(epoch FROM _govbus_time) * 1000)::bigint, _govbus_policy \
                     FROM {table} ORDER BY _govbus_subject"
                ),
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, String>(3),
                    r.get::<_, String>(4),
                    r.get::<_, i64>(5),
                    r.get::<_, String>(6),
                )
            })
            .collect::<Vec<_>>()
    };
    let policy = catalog()
        .subscription("hrss_deaths_pension_stop")
        .unwrap()
        .policy_version
        .clone();
    let expect = |k: usize, version: u64, office: &str| {
        (
            format!("DR-2026-{k:08}"),
            office.to_owned(),
            version as i64,
            format!("ev-{k}-{version}"),
            "update".to_owned(),
            now + k as i64,
            policy.clone(),
        )
    };

    assert!(sink.copies(), "new keys are copied in on this table");
    // All new: copied in.
    let first: Vec<Delivery> = odd
        .iter()
        .enumerate()
        .map(|(k, o)| event(k, 1, o))
        .collect();
    sink.apply(&first, &[(0, 10)], || async { Ok(()) })
        .await
        .unwrap();
    let want: Vec<_> = odd
        .iter()
        .enumerate()
        .map(|(k, o)| expect(k, 1, o))
        .collect();
    assert_eq!(rows().await, want, "rows copied in");

    // Held keys (odd values reversed, version 2) and new ones in one
    // batch; key 0 twice, its last change winning.
    let mut second: Vec<Delivery> = odd
        .iter()
        .rev()
        .enumerate()
        .map(|(k, o)| event(k, 2, o))
        .collect();
    second.extend(odd.iter().enumerate().map(|(k, o)| event(k + 10, 1, o)));
    second.push(event(0, 3, "最后"));
    sink.apply(&second, &[(0, 31)], || async { Ok(()) })
        .await
        .unwrap();
    let mut want: Vec<_> = odd
        .iter()
        .rev()
        .enumerate()
        .map(|(k, o)| expect(k, 2, o))
        .collect();
    want[0] = expect(0, 3, "最后");
    want.extend(odd.iter().enumerate().map(|(k, o)| expect(k + 10, 1, o)));
    assert_eq!(rows().await, want, "rows upserted and copied in one batch");
}

/// A sink of the death registrations into `table`, connected with `conninfo`.
async fn open_deaths(
    conninfo: &str,
    table: &str,
) -> Result<PgSink, govbus_sink::sinks::postgres::OpenError> {
    let catalog = catalog();
    let sub = catalog.subscription("hrss_deaths_pension_stop").unwrap();
    let ds = catalog.dataset(&sub.dataset).unwrap();
    PgSink::open(
        conninfo,
        table,
        sub,
        ds,
        "data.civil_affairs.death_registration",
    )
    .await
}

/// [`open_deaths`] again after a sink on the table was dropped: its
/// connection (and its table locks) ends a moment later.
async fn reopen_deaths(conninfo: &str, table: &str) -> PgSink {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open_deaths(conninfo, table).await {
            Err(govbus_sink::sinks::postgres::OpenError::Busy(_))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other.unwrap(),
        }
    }
}

fn death_of(key: &str, id: &str, version: u64, office: &str) -> Delivery {
    let mut e = delivery(id, version, office, "update", 1_795_996_800_000);
    e.subject = key.into();
    e
}

/// Copying new keys in must not write anything the upsert would not: a
/// subscriber's unique index that a held key's change frees for a new key
/// in the same batch, an INSERT rule on the table, a column left at
/// another type than the grant declares. And the table has one writer
/// whatever name it is configured under.
#[tokio::test]
async fn new_keys_are_written_as_the_upsert_would_write_them() {
    // A unique index of the subscriber's: key A leaves office X for Y,
    // and new key B takes X, in one batch.
    let (schema, table, mut sink) = deaths_table().await;
    assert!(sink.copies());
    let client = schema.client().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX ON {table} (registering_office)"
        ))
        .await
        .unwrap();
    sink.apply(&[death_of("A", "a1", 1, "X")], &[(0, 1)], || async {
        Ok(())
    })
    .await
    .unwrap();
    sink.apply(
        &[death_of("A", "a2", 2, "Y"), death_of("B", "b1", 1, "X")],
        &[(0, 3)],
        || async { Ok(()) },
    )
    .await
    .expect("the batch the upsert alone applies");
    let rows: Vec<(String, String)> = client
        .query(
            &format!("SELECT _govbus_subject, registering_office FROM {table} ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("A".into(), "Y".into()), ("B".into(), "X".into())]);

    // An INSERT rule (an audit trail of the subscriber's): PostgreSQL
    // refuses the upsert on such a table, and COPY (which skips rules)
    // does not slip new rows past it either — the batch is refused, with
    // nothing written.
    let schema = PgSchema::create().await.unwrap();
    let client = schema.client().await.unwrap();
    let table = format!("{}.deaths", schema.name());
    drop(open_deaths(&schema.conninfo(), &table).await.unwrap());
    client
        .batch_execute(&format!(
            "CREATE TABLE {s}.seen (subject text); \
             CREATE RULE audit AS ON INSERT TO {table} DO ALSO INSERT INTO {s}.seen VALUES (NEW._govbus_subject)",
            s = schema.name()
        ))
        .await
        .unwrap();
    let mut sink = reopen_deaths(&schema.conninfo(), &table).await;
    assert!(!sink.copies(), "no COPY past a rule");
    let refused = sink
        .apply(&[death_of("C", "c1", 1, "Z")], &[(0, 1)], || async {
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("0A000"), "{refused}");
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no row written past the rule");

    // A column left at another type: `registered_at` as `timestamp`,
    // written under a session time zone other than UTC. A new row and an
    // updated one carry the same instant and must hold the same value.
    let schema = PgSchema::create().await.unwrap();
    let client = schema.client().await.unwrap();
    // A name of this test's own: the name lock is database-wide.
    let bare = format!("{}_deaths", schema.name());
    let table = format!("{}.{bare}", schema.name());
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (_govbus_subject text PRIMARY KEY, _govbus_source_version bigint NOT NULL, \
             _govbus_event_id text NOT NULL, _govbus_op text NOT NULL, _govbus_time timestamptz, \
             registered_at timestamp)"
        ))
        .await
        .unwrap();
    let shanghai = format!(
        "{} options='-csearch_path={} -cTimeZone=Asia/Shanghai'",
        PgSchema::conninfo_default(),
        schema.name()
    );
    let mut sink = open_deaths(&shanghai, &table).await.unwrap();
    assert!(!sink.copies(), "no COPY into a column of another type");
    sink.apply(&[death_of("D", "d1", 1, "Z")], &[(0, 1)], || async {
        Ok(())
    })
    .await
    .unwrap();
    sink.apply(
        &[death_of("D", "d2", 2, "Z"), death_of("E", "e1", 1, "Z")],
        &[(0, 3)],
        || async { Ok(()) },
    )
    .await
    .unwrap();
    let at: Vec<String> = client
        .query(
            &format!("SELECT registered_at::text FROM {table} ORDER BY _govbus_subject"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(at.len(), 2);
    assert_eq!(
        at[0], at[1],
        "an updated row and a new one hold the same time"
    );

    // One writer per table, whatever name it is configured under: here
    // qualified, then through the search path — refused before it follows
    // a grant (a stored position of another policy version would have it
    // forget the position and the delete markers).
    client
        .batch_execute("UPDATE govbus_offsets SET policy_version = 'older'")
        .await
        .unwrap();
    let held = open_deaths(&shanghai, &table).await;
    assert!(
        matches!(held, Err(govbus_sink::sinks::postgres::OpenError::Busy(_))),
        "the same name: {held:?}"
    );
    let other = open_deaths(&schema.conninfo(), &bare).await;
    assert!(
        matches!(
            other,
            Err(govbus_sink::sinks::postgres::OpenError::SameTable(_))
        ),
        "the same table under another name: {other:?}"
    );
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM govbus_offsets WHERE policy_version = 'older'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the refused sink left the position alone");
    drop(sink);
}

/// A delete marker holds through the lookup that sends new keys to COPY:
/// a late change at or below the marker's version is not copied in, one
/// above it is. Each change comes to a sink just opened, so each batch is
/// looked up.
#[tokio::test]
async fn a_delete_marker_holds_against_a_late_change_to_a_new_key() {
    let (schema, table, mut sink) = deaths_table().await;
    let client = schema.client().await.unwrap();
    let mut delete = death_of("F", "f5", 5, "");
    delete.op = "delete".into();
    delete.data = None;
    sink.apply(
        &[death_of("F", "f1", 1, "X"), delete],
        &[(0, 2)],
        || async { Ok(()) },
    )
    .await
    .unwrap();
    drop(sink);
    let row = || async {
        client
            .query_opt(&format!("SELECT _govbus_source_version FROM {table}"), &[])
            .await
            .unwrap()
            .map(|r| r.get::<_, i64>(0))
    };
    for (version, offset, after) in [(4, 3, None), (5, 4, None), (6, 5, Some(6))] {
        let mut sink = reopen_deaths(&schema.conninfo(), &table).await;
        assert!(sink.copies());
        sink.apply(
            &[death_of("F", &format!("f{version}"), version, "Y")],
            &[(0, offset)],
            || async { Ok(()) },
        )
        .await
        .unwrap();
        drop(sink);
        assert_eq!(row().await, after, "version {version} after a delete at 5");
    }
}
