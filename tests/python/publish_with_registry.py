"""A department developer's publisher, written with stock Confluent clients:
SchemaRegistryClient + AvroSerializer against govbus's registry, producing
Confluent-framed Avro to the department's ingest topic. Prints what it did as
JSON for the Rust test that drives it."""
import argparse
import datetime
import decimal
import json

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

ap = argparse.ArgumentParser()
ap.add_argument("--registry", required=True)
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--data-subject", required=True)
args = ap.parse_args()

client = SchemaRegistryClient({"url": args.registry})
latest = client.get_latest_version(args.data_subject)
# The serializer registers (looks up) the schema under <topic>-value, the
# default TopicNameStrategy, and frames each value with the returned id.
serializer = AvroSerializer(client, latest.schema.schema_str, conf={"auto.register.schemas": True})
record = {
    "payment_id": "PP202699000001",
    "recipient_id_number": "11010519491231002X",
    "recipient_name": "张建国",
    "pension_type": "ENTERPRISE_EMPLOYEE",
    "pay_month": "2026-10",
    "amount": decimal.Decimal("4352.60"),
    "paid_at": datetime.datetime(2026, 10, 15, 2, 0, tzinfo=datetime.timezone.utc),
}
value = serializer(record, SerializationContext(args.topic, MessageField.VALUE))
producer = Producer({"bootstrap.servers": args.bootstrap})
producer.produce(args.topic, key=record["payment_id"], value=value)
assert producer.flush(30) == 0, "not delivered"
print(json.dumps({"latest_id": latest.schema_id, "framed_id": int.from_bytes(value[1:5], "big"), "key": record["payment_id"]}))
