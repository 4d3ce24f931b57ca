"""A competent Python router, the peer `govbus bench router --peer` measures
govbus against (issue 16): confluent-kafka + fastavro, doing what the govbus
router does for Confluent-framed Avro input of hrss.pension_payment.

usage: peer_router.py BOOTSTRAP INPUT DATA DLQ RECORDS GROUP SCHEMA_ID AVSC

- the department is the input topic's (ingest.hrss) and owns the dataset;
- the value is Confluent-framed with the dataset's schema id, and decodes
  with the dataset's schema (fastavro's compiled reader);
- the dataset's rules: required payment_id and recipient_name, a GB 11643
  resident ID (region, birth date, check character), name length <= 50,
  pay_month YYYY-MM, amount within 0.01..100000 with at most 2 decimals,
  paid_at not more than 5 minutes in the future; the message key equals
  the record key;
- a routed record goes to DATA with the CloudEvents headers the router
  writes (ce_specversion, ce_id, ce_source, ce_type, ce_subject, ce_time,
  content-type, ce_op, ce_sourceversion, ce_schemaid), the value as it came
  (it is already canonical); a rejected one to DLQ with govbus.error.*;
- at-least-once: offsets are committed only after every record of the
  batch is acknowledged.

Prints one JSON line when RECORDS records are settled: the seconds from the
first decided record to the last acknowledged and committed one, and the
process's CPU seconds (every thread) over the same span.
"""
import datetime
import io
import json
import re
import sys
import time
from decimal import Decimal

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, src, data_topic, dlq_topic = sys.argv[1:5]
total, group, schema_id, avsc = int(sys.argv[5]), sys.argv[6], int(sys.argv[7]), sys.argv[8]

schema = fastavro.parse_schema(json.load(open(avsc)))
DATASET = "hrss.pension_payment"
OWNER = "hrss"
SOURCE = b"/departments/hrss"
PROVINCES = {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45,
             46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK = "10X98765432"
MONTH = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
OPS = {b"create", b"update", b"delete", b"snapshot"}
MIN, MAX = Decimal("0.01"), Decimal("100000")
department = src.rsplit(".", 1)[-1]


def resident_id(v, today):
    if len(v) != 18 or not v.isascii():
        return "resident_id_length"
    body, last = v[:17], v[17]
    if not body.isdigit() or not (last.isdigit() or last in "Xx"):
        return "resident_id_format"
    if int(body[:2]) not in PROVINCES:
        return "resident_id_region"
    try:
        born = datetime.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        return "resident_id_birth_date"
    if born.year < 1800 or born > today:
        return "resident_id_birth_date"
    if CHECK[sum(int(d) * w for d, w in zip(body, WEIGHTS)) % 11] != last.upper():
        return "resident_id_checksum"
    return None


def check(rec, key, now_ms, today):
    """The rejection reason, or None."""
    if not rec["payment_id"]:
        return "required", "payment_id"
    bad = resident_id(rec["recipient_id_number"], today)
    if bad:
        return bad, "recipient_id_number"
    if not rec["recipient_name"]:
        return "required", "recipient_name"
    if len(rec["recipient_name"]) > 50:
        return "length", "recipient_name"
    if not MONTH.match(rec["pay_month"]):
        return "pattern", "pay_month"
    amount = rec["amount"]
    if not (MIN <= amount <= MAX):
        return "range", "amount"
    if amount != amount.quantize(Decimal("0.01")):
        return "decimal_scale", "amount"
    paid = rec["paid_at"]
    if int(paid.timestamp() * 1000) > now_ms + 300_000:
        return "not_future", "paid_at"
    if key is not None and key.decode().lower() != rec["payment_id"].lower():
        return "key_mismatch", None
    return None


def decide(m, now_ms, today):
    """(topic, key, value, headers) for one input message."""
    if department != OWNER:
        return None, ("not_owner", None)
    headers = dict(m.headers() or [])
    op = headers.get("ce_op", b"update")
    if op not in OPS:
        return None, ("envelope_invalid", "ce_op")
    version = headers.get("ce_sourceversion")
    if version is not None and not (version.isdigit() and int(version) < 2**63):
        return None, ("envelope_invalid", "ce_sourceversion")
    v = m.value()
    if v is None or len(v) < 5 or v[0] != 0:
        return None, ("encoding", None)
    if int.from_bytes(v[1:5], "big") != schema_id:
        return None, ("schema_unknown", None)
    try:
        buf = io.BytesIO(v)
        buf.seek(5)
        rec = fastavro.schemaless_reader(buf, schema, None)
        if buf.tell() != len(v):
            return None, ("avro_decode", None)
    except Exception:  # noqa: BLE001 - any decode failure is a rejection
        return None, ("avro_decode", None)
    bad = check(rec, m.key(), now_ms, today)
    if bad:
        return None, bad
    t = headers.get("ce_time")
    if t is None:
        t = datetime.datetime.fromtimestamp(m.timestamp()[1] / 1000, datetime.timezone.utc) \
            .isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
    out = [
        ("ce_specversion", b"1.0"),
        ("ce_id", headers.get("ce_id") or f"{m.topic()}-{m.partition()}-{m.offset()}".encode()),
        ("ce_source", SOURCE),
        ("ce_type", DATASET.encode()),
        ("ce_subject", rec["payment_id"].encode()),
        ("ce_time", t),
        ("content-type", b"application/avro"),
        ("ce_op", op),
        ("ce_sourceversion", version or str(m.offset()).encode()),
        ("ce_schemaid", str(schema_id).encode()),
    ]
    return (data_topic, rec["payment_id"].encode(), v, out), None


consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    # As govbus's consumers (govbus_kafka::config): no 1 s pause after the
    # local queue fills.
    "fetch.queue.backoff.ms": 10,
})
producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    # As govbus's producers: the producer id without a 0.5-1 s wait.
    "enable.sparse.connections": False,
    "linger.ms": 5,
    "queue.buffering.max.messages": 500000,
})
consumer.subscribe([src])
settled, started, cpu0, failed = 0, None, 0.0, []
counts = {}


def on_delivery(err, _msg):
    if err is not None:
        failed.append(err)


while settled < total:
    batch = consumer.consume(num_messages=1000, timeout=1.0)
    if not batch:
        continue
    if started is None:
        started, cpu0 = time.monotonic(), time.process_time()
    now_ms = int(time.time() * 1000)
    today = datetime.date.today()
    offsets = {}
    for m in batch:
        if m.error():
            continue
        routed, rejected = decide(m, now_ms, today)
        if routed:
            topic, key, value, headers = routed
        else:
            reason, field = rejected
            counts[reason] = counts.get(reason, 0) + 1
            topic, key, value = dlq_topic, m.key(), m.value()
            headers = [("govbus.error.reason", reason.encode())]
            if field:
                headers.append(("govbus.error.field", field.encode()))
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        offsets[(m.topic(), m.partition())] = m.offset() + 1
    # Effects before offsets: every record acknowledged, then the commit.
    producer.flush()
    if failed:
        sys.exit(f"a write failed: {failed[0]}")
    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    settled += len(batch)

print(json.dumps({
    "seconds": time.monotonic() - started,
    "cpu_seconds": time.process_time() - cpu0,
    "records": settled,
    "rejected": counts,
}), flush=True)
consumer.close()
