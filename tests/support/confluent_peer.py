#!/usr/bin/env python3
"""An independent Kafka peer for purekafka's integration tests: Confluent's Python client
(confluent-kafka, which wraps librdkafka), driven from the Rust tests through
tests/support/confluent.rs. Installed by scripts/setup-test-env.sh.

Commands (every one prints one JSON object per line on stdout, and exits non-zero with the
error on stderr when something fails):

  produce-txn --bootstrap B --topic T --txn-id ID [--partition P] [--prefix S]
              (--commit N | --abort N) [--commit N | --abort N ...]
      Runs one transaction per --commit/--abort, in order, each writing N records to
      partition P (default 0) with keys "<prefix>-<txn>-<i>" and the same values; commits or
      aborts it. Prints {"txn": k, "outcome": "commit"|"abort", "records": N} per transaction.

  consume --bootstrap B --topic T --group G [--isolation read_committed|read_uncommitted]
          --count N [--timeout-s S] [--partitions P]
      Reads from the earliest offset until N records arrived or S seconds passed with none
      (default 10). With --partitions, reads partitions 0..P-1 assigned by hand (no group
      join: tansu takes seconds per join) instead of subscribing. Prints {"partition", "offset", "key", "value"} per record (key and value
      as UTF-8, or null), then {"done": count}.
"""

import argparse
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition


def produce_txn(args):
    plan = []
    i = 0
    while i < len(args.plan):
        kind, n = args.plan[i], int(args.plan[i + 1])
        plan.append((kind, n))
        i += 2
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.txn_id,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    for k, (kind, n) in enumerate(plan):
        producer.begin_transaction()
        for j in range(n):
            key = f"{args.prefix}-{k}-{j}".encode()
            producer.produce(args.topic, key=key, value=key, partition=args.partition)
            producer.poll(0)
        producer.flush(30)
        if kind == "commit":
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        print(json.dumps({"txn": k, "outcome": kind, "records": n}), flush=True)


def consume(args):
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": args.isolation,
        }
    )
    if args.partitions:
        consumer.assign(
            [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(args.partitions)]
        )
    else:
        consumer.subscribe([args.topic])
    count = 0
    last = time.monotonic()
    while count < args.count and time.monotonic() - last < args.timeout_s:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        last = time.monotonic()
        count += 1
        key = msg.key().decode() if msg.key() is not None else None
        value = msg.value().decode() if msg.value() is not None else None
        print(
            json.dumps(
                {"partition": msg.partition(), "offset": msg.offset(), "key": key, "value": value}
            ),
            flush=True,
        )
    consumer.close()
    print(json.dumps({"done": count}), flush=True)


class PlanAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        plan = getattr(namespace, "plan", None) or []
        plan += [option_string.lstrip("-"), values]
        namespace.plan = plan


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce-txn")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--txn-id", required=True)
    p.add_argument("--partition", type=int, default=0)
    p.add_argument("--prefix", default="cf")
    p.add_argument("--commit", action=PlanAction, dest="plan_commit")
    p.add_argument("--abort", action=PlanAction, dest="plan_abort")
    c = sub.add_parser("consume")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--isolation", default="read_committed")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout-s", type=float, default=10.0)
    c.add_argument("--partitions", type=int, default=0)
    args = parser.parse_args()
    try:
        if args.command == "produce-txn":
            if not getattr(args, "plan", None):
                parser.error("produce-txn needs at least one --commit N or --abort N")
            produce_txn(args)
        else:
            consume(args)
    except Exception as e:  # reported to the Rust test, which fails with it
        print(f"confluent_peer: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
