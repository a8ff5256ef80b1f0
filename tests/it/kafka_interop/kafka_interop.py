"""The independent Kafka client of tests/it/kafka_interop.rs.

    python kafka_interop.py request.json

Python's confluent-kafka (its own bundled librdkafka) produces and consumes
through the test's broker; values are encoded and decoded by code that
alertsvc did not write:

  avro-single-object  fastavro: C3 01, the fingerprint fastavro computes
                      (CRC-64-AVRO of the parsing canonical form,
                      little-endian), then fastavro's schemaless datum
  avro-confluent      Confluent's AvroSerializer / AvroDeserializer against
                      the registry named in the request (TopicNameStrategy)
  json                the json module

Request:
  {"bootstrap": "host:port", "registry": "http://..." or null,
   "timeout_s": 30,
   "produce": [{"topic", "format", "schema", "key", "value", "timestamp"}],
   "consume": [{"topic", "format", "schema", "count", "context_topic"}]}

`value` null produces a tombstone. `context_topic` is the topic whose
subject names a Confluent record's schema (a dead letter's source topic).

Response (stdout):
  {"produced": [{"topic", "partition", "offset", "timestamp", "bytes"}],
   "consumed": {topic: [{"partition", "offset", "timestamp", "key",
                         "headers", "bytes", "value"}]}}

`bytes` is hex (null for a tombstone). Timestamps that the Avro readers
return as datetimes come back as epoch milliseconds, as alertsvc models them.
Anything unexpected exits non-zero with the reason on stderr.
"""

import datetime
import io
import json
import sys
import time

INSTALL = "run scripts/install-test-deps.sh"

try:
    import fastavro
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from fastavro.schema import fingerprint, to_parsing_canonical_form
except ImportError as e:
    sys.exit(f"{e}: {INSTALL}")

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MILLISECOND = datetime.timedelta(milliseconds=1)
# After the expected count arrived, reading goes on this long so that an
# extra record (a duplicate) is seen and fails the comparison.
SETTLE_S = 0.75


def fail(message):
    sys.exit(message)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def to_json(value):
    """A decoded value as plain JSON, timestamps as epoch milliseconds."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // MILLISECOND
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


class SingleObject:
    def __init__(self, schema_path):
        schema = load_json(schema_path)
        self.name = schema_path
        # fastavro's CRC-64-AVRO hex digest is little-endian, as on the wire.
        digest = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
        self.header = b"\xc3\x01" + bytes.fromhex(digest)
        self.schema = fastavro.parse_schema(schema)

    def encode(self, value, topic):
        out = io.BytesIO()
        out.write(self.header)
        fastavro.schemaless_writer(out, self.schema, value)
        return out.getvalue()

    def decode(self, data, topic):
        if data[:10] != self.header:
            raise ValueError(f"header {data[:10].hex()} is not {self.header.hex()} (fastavro's for {self.name})")
        body = io.BytesIO(data[10:])
        value = fastavro.schemaless_reader(body, self.schema)
        if body.read():
            raise ValueError("trailing bytes after the datum")
        return value


class Json:
    def encode(self, value, topic):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")

    def decode(self, data, topic):
        return json.loads(data.decode("utf-8"))


class Confluent:
    def __init__(self, registry, schema_path):
        with open(schema_path, encoding="utf-8") as f:
            text = f.read()
        # The serializer's defaults, as a Python producer team would run it:
        # it registers its schema under <topic>-value.
        self.serializer = AvroSerializer(registry, text)
        self.deserializer = AvroDeserializer(registry)

    def encode(self, value, topic):
        return self.serializer(value, SerializationContext(topic, MessageField.VALUE))

    def decode(self, data, topic):
        return self.deserializer(data, SerializationContext(topic, MessageField.VALUE))


class Codecs:
    def __init__(self, registry_url):
        self.registry = SchemaRegistryClient({"url": registry_url}) if registry_url else None
        self.cache = {}

    def get(self, format, schema):
        key = (format, schema)
        if key not in self.cache:
            if format == "avro-single-object":
                self.cache[key] = SingleObject(schema)
            elif format == "json":
                self.cache[key] = Json()
            elif format == "avro-confluent":
                if self.registry is None:
                    fail("avro-confluent needs \"registry\" in the request")
                self.cache[key] = Confluent(self.registry, schema)
            else:
                fail(f"unknown format {format!r}")
        return self.cache[key]


def produce(request, codecs):
    producer = Producer(
        {
            "bootstrap.servers": request["bootstrap"],
            "acks": "all",
            "linger.ms": 0,
            "log_level": 3,
        }
    )
    results = [None] * len(request["produce"])

    def delivered(index):
        def report(err, msg):
            if err is not None:
                results[index] = {"error": str(err)}
            else:
                results[index] = {
                    "topic": msg.topic(),
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "timestamp": msg.timestamp()[1],
                }

        return report

    written = []
    for index, item in enumerate(request["produce"]):
        topic = item["topic"]
        value = item["value"]
        data = None
        if value is not None:
            data = codecs.get(item["format"], item.get("schema")).encode(value, topic)
        written.append(data)
        producer.produce(
            topic,
            key=item["key"].encode("utf-8"),
            value=data,
            timestamp=item["timestamp"],
            on_delivery=delivered(index),
        )
        # One at a time, so a table's tombstone lands after its upsert.
        producer.flush(request["timeout_s"])
    if producer.flush(request["timeout_s"]) != 0:
        fail("records still undelivered after the timeout")
    for index, (result, data) in enumerate(zip(results, written)):
        if result is None or "error" in result:
            fail(f"record {index} to {request['produce'][index]['topic']}: {result}")
        result["bytes"] = None if data is None else data.hex()
    return results


def consume(request, codecs):
    wanted = {item["topic"]: item for item in request["consume"]}
    consumer = Consumer(
        {
            "bootstrap.servers": request["bootstrap"],
            "group.id": f"kafka-interop-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 100,
            "log_level": 3,
        }
    )
    assignment = []
    for topic in wanted:
        metadata = consumer.list_topics(topic, timeout=request["timeout_s"])
        partitions = metadata.topics[topic].partitions
        if not partitions:
            fail(f"topic {topic} has no partitions")
        assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)]
    consumer.assign(assignment)

    records = {topic: [] for topic in wanted}
    deadline = time.monotonic() + request["timeout_s"]
    settle_until = None
    while True:
        now = time.monotonic()
        done = all(len(records[t]) >= item["count"] for t, item in wanted.items())
        if done and settle_until is None:
            settle_until = now + SETTLE_S
        until = settle_until if done else deadline
        if now >= until:
            break
        msg = consumer.poll(min(0.2, until - now))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            fail(f"reading: {msg.error()}")
        records[msg.topic()].append(record(msg, wanted[msg.topic()], codecs))
    consumer.close()
    for topic, item in wanted.items():
        if len(records[topic]) < item["count"]:
            fail(f"timed out reading {topic}: {len(records[topic])} of {item['count']} records")
        records[topic].sort(key=lambda r: (r["partition"], r["offset"]))
    return records


def record(msg, item, codecs):
    where = f"{msg.topic()} partition {msg.partition()} offset {msg.offset()}"
    key = msg.key()
    try:
        key = None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{where}: key {key!r} is not UTF-8")
    data = msg.value()
    value = None
    if data is not None:
        codec = codecs.get(item["format"], item.get("schema"))
        try:
            value = to_json(codec.decode(data, item.get("context_topic") or msg.topic()))
        except Exception as e:  # any decoder's failure, reported with its record
            fail(f"{where}: cannot decode with {item['format']}: {type(e).__name__}: {e}")
    headers = {}
    for name, header in msg.headers() or []:
        headers[name] = None if header is None else header.decode("utf-8")
    return {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": msg.timestamp()[1],
        "key": key,
        "headers": headers,
        "bytes": None if data is None else data.hex(),
        "value": value,
    }


def main():
    request = load_json(sys.argv[1])
    request.setdefault("timeout_s", 30)
    codecs = Codecs(request.get("registry"))
    response = {"produced": [], "consumed": {}}
    if request.get("produce"):
        response["produced"] = produce(request, codecs)
    if request.get("consume"):
        response["consumed"] = consume(request, codecs)
    json.dump(response, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
