//! A grant's sink is checked the way the sink will treat it: a file sink's
//! `dir` stays inside the sink's working directory, and a webhook `url` that
//! the sink's SSRF guard would refuse (a loopback, private, link-local or
//! unique-local literal address, in any spelling) is refused by
//! `catalog check` unless the grant says `allow_private = true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Catalog, Problem};

fn load(sink: &str) -> Result<Catalog, Vec<Problem>> {
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("departments.toml"),
        "[[department]]\nid = \"lab\"\nname_zh = \"实验室\"\nname_en = \"Lab\"\n".to_owned(),
    );
    files.insert(
        PathBuf::from("datasets/lab.things/dataset.toml"),
        "owner = \"lab\"\ntitle_zh = \"东西\"\ntitle_en = \"Things\"\nclassification = \"internal\"\nkey = [\"id\"]\nfreshness = \"1h\"\n".to_owned(),
    );
    files.insert(
        PathBuf::from("datasets/lab.things/v1.avsc"),
        r#"{"type": "record", "name": "Things", "namespace": "lab", "fields": [{"name": "id", "type": "string"}]}"#.to_owned(),
    );
    files.insert(
        PathBuf::from("subscriptions/t.toml"),
        format!("subscriber = \"lab\"\ndataset = \"lab.things\"\npurpose = \"test\"\n\n[sink]\n{sink}\n"),
    );
    Catalog::from_files(Path::new("lab"), &files).map_err(|p| p.0)
}

/// `sink` (the body of `[sink]`) loads, or fails with exactly one problem in
/// the subscription's file at `path`, whose message contains each of `says`.
fn check(sink: &str, refused: Option<(&str, &[&str])>) {
    match (load(sink), refused) {
        (Ok(_), None) => {}
        (Ok(_), Some((path, _))) => panic!("[sink] {sink:?} loaded; want a problem at {path}"),
        (Err(p), None) => panic!("[sink] {sink:?}: {p:?}"),
        (Err(p), Some((path, says))) => {
            assert_eq!(p.len(), 1, "[sink] {sink:?}: {p:?}");
            assert!(p[0].file.ends_with("subscriptions/t.toml"), "{p:?}");
            assert_eq!(p[0].path, path, "[sink] {sink:?}: {p:?}");
            for s in says {
                assert!(
                    p[0].message.contains(s),
                    "[sink] {sink:?}: {:?} lacks {s:?}",
                    p[0].message
                );
            }
        }
    }
}

fn file(dir: &str) -> String {
    format!(
        "type = \"file\"\ndir = {}",
        toml::Value::String(dir.to_owned())
    )
}

fn webhook(url: &str, allow_private: bool) -> String {
    format!(
        "type = \"webhook\"\nurl = {}\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallow_private = {allow_private}",
        toml::Value::String(url.to_owned())
    )
}

#[test]
fn a_file_sink_writes_only_below_its_working_directory() {
    for good in [
        "var/deliveries/t",
        "out",
        "./out",
        "a/../b",
        "a/b/../../c",
        ".",
        "dots..in..name",
    ] {
        check(&file(good), None);
    }
    for (bad, says) in [
        ("../x", "leaves it"),
        ("..", "leaves it"),
        ("a/../../x", "leaves it"),
        ("./../x", "leaves it"),
        ("var/../../../etc", "leaves it"),
        ("/etc/cron.d", "not absolute"),
        ("/tmp/../etc", "not absolute"),
        ("//server/share", "not absolute"),
        ("", "must not be empty"),
    ] {
        check(&file(bad), Some(("sink.dir", &[says])));
    }
}

#[test]
fn a_webhook_to_a_non_public_literal_address_is_refused_unless_allowed() {
    let refused: &[&str] = &["SSRF guard", "allow_private = true", "public address"];
    for bad in [
        "http://10.0.0.1/hook",
        "http://127.0.0.1:8080/x",
        "https://169.254.169.254/latest/meta-data",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[::1]/",
        "http://[::1]:9000/hook",
        "http://[fd00::1]/",
        "http://[fe80::1%25eth0]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0X7F000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://10.1/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://127.0.0.1./",
        "http://user:pw@127.0.0.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ] {
        check(&webhook(bad, false), Some(("sink.url", refused)));
        check(&webhook(bad, true), None);
    }
    for good in [
        "https://receiver.example.gov.cn/govbus",
        "http://8.8.8.8/hook",
        "http://134744072/",
        "https://[2606:4700::1111]/x",
        "http://[::ffff:1.1.1.1]/",
        "https://hooks.example:8443/a?b#c",
        // Host names: only the sink can resolve them (and refuse them then).
        "http://internal.example/",
        "http://localhost:8080/",
    ] {
        check(&webhook(good, false), None);
    }
    let malformed: &[&str] = &["http:// or https://"];
    for bad in [
        "ftp://example.org",
        "http://",
        "http:///x",
        "https://:443/",
        "http://[::1/",
        "http://[nope]/",
        "http://1.2.3.4.5/",
        "http://256.1.1.1/",
        "http://1.2.3.999/",
        "http://08.1.1.1/",
        "http://a\\b/",
        "http://127.0.0.%31/",
    ] {
        for allow_private in [false, true] {
            check(&webhook(bad, allow_private), Some(("sink.url", malformed)));
        }
    }
}
