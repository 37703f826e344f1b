"""Reads a topic with kafka-python and parses every record with the CloudEvents SDK's
Kafka binding (binary content mode), as a CloudEvents consumer that knows nothing of
relaybox would. Prints one JSON object per record: its partition, offset, the event's
attributes (time in ISO 8601) and its data in hex. Exits non-zero if a record is not a
valid CloudEvent, or if fewer than COUNT records arrive within TIMEOUT seconds.

usage: read.py BROKERS TOPIC COUNT TIMEOUT
"""

import datetime
import json
import sys
import time

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from kafka import KafkaConsumer


def main():
    brokers, topic, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=brokers.split(","),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit(f"read.py: {seen} of {count} records within {timeout}s")
            for _, records in consumer.poll(timeout_ms=int(min(left, 1) * 1000)).items():
                for rec in records:
                    names = [k for k, _ in rec.headers]
                    if len(names) != len(set(names)):
                        sys.exit(f"read.py: offset {rec.offset}: a header name repeats: {names}")
                    msg = KafkaMessage(headers=dict(rec.headers), key=rec.key, value=rec.value)
                    event = from_binary(msg, JSONFormat())  # validates the required attributes
                    attrs = {}
                    for k, v in event.get_attributes().items():
                        attrs[k] = v.isoformat() if isinstance(v, datetime.datetime) else v
                    data = event.get_data()
                    if isinstance(data, str):
                        data = data.encode("utf-8")
                    print(json.dumps({
                        "partition": rec.partition,
                        "offset": rec.offset,
                        "attributes": attrs,
                        "data": (data or b"").hex(),
                    }), flush=True)
                    seen += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
