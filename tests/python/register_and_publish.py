"""Registers a new compatible version of a dataset's schema with the stock
Confluent client, tries an incompatible one, then publishes a record written
with the new version. Prints what happened as JSON."""
import argparse
import datetime
import decimal
import json

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ap = argparse.ArgumentParser()
ap.add_argument("--registry", required=True)
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--data-subject", required=True)
args = ap.parse_args()

client = SchemaRegistryClient({"url": args.registry})
v1 = json.loads(client.get_latest_version(args.data_subject).schema.schema_str)
v2 = dict(v1, fields=v1["fields"] + [{"name": "remark", "type": ["null", "string"], "default": None, "doc": "备注 / Remark"}])
v2_id = client.register_schema(args.data_subject, Schema(json.dumps(v2), "AVRO"))
bad = dict(v1, fields=v1["fields"] + [{"name": "remark", "type": "string"}])
try:
    client.register_schema(args.data_subject, Schema(json.dumps(bad), "AVRO"))
    incompatible = None
except SchemaRegistryError as e:
    incompatible = e.http_status_code

serializer = AvroSerializer(client, json.dumps(v2), conf={"auto.register.schemas": False, "use.latest.version": False})
record = {
    "payment_id": "PP202699000002",
    "recipient_id_number": "11010519491231002X",
    "recipient_name": "张建国",
    "pension_type": "ENTERPRISE_EMPLOYEE",
    "pay_month": "2026-10",
    "amount": decimal.Decimal("4352.60"),
    "paid_at": datetime.datetime(2026, 10, 15, 2, 0, tzinfo=datetime.timezone.utc),
    "remark": "补发",
}
# Serialize under the data subject's new version (the id the registry gave).
value = serializer(record, SerializationContext(args.data_subject[: -len("-value")], MessageField.VALUE))
producer = Producer({"bootstrap.servers": args.bootstrap})
producer.produce(args.topic, key=record["payment_id"], value=value)
assert producer.flush(30) == 0, "not delivered"
print(json.dumps({"v2_id": v2_id, "framed_id": int.from_bytes(value[1:5], "big"), "incompatible_status": incompatible}))
