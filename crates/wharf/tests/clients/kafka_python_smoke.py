"""kafka-python (a pure-Python client, independent of librdkafka) against Wharf: topic admin, a gzip producer
with headers and keys, a consumer group that commits and resumes, and group listing. Exits non-zero on any
mismatch. Run by crates/wharf/tests/kafka.rs with the broker's bootstrap address as the only argument."""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic("py", 3, 1)])
assert "py" in admin.list_topics(), admin.list_topics()

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                         key_serializer=str.encode, value_serializer=str.encode)
for i in range(60):
    producer.send("py", key=f"k{i % 6}", value=f"v{i}", headers=[("h", b"1"), ("h", b"2")])
producer.flush()

consumer = KafkaConsumer("py", bootstrap_servers=bootstrap, group_id="pyg", auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=4000)
got = [(m.partition, m.key, m.value, m.headers) for m in consumer]
assert len(got) == 60, len(got)
assert sorted(int(v[1:]) for _, _, v, _ in got) == list(range(60))
partition_of = {}
for partition, key, _, headers in got:
    assert partition_of.setdefault(key, partition) == partition, "a key moved partitions"
    assert headers == [("h", b"1"), ("h", b"2")], headers
consumer.commit()
consumer.close()

again = KafkaConsumer("py", bootstrap_servers=bootstrap, group_id="pyg", auto_offset_reset="earliest",
                      consumer_timeout_ms=2000)
assert list(again) == [], "the group did not resume from its committed offsets"
again.close()

offsets = admin.list_group_offsets("pyg")["pyg"]
assert sum(o.offset for o in offsets.values()) == 60, offsets
groups = admin.list_groups()
assert any("pyg" in str(g) for g in groups), groups
described = admin.describe_groups(["pyg"])
assert described, described
print("kafka-python smoke test passed")
