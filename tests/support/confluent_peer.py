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

  produce-steps --bootstrap B --topic T [--partition P] [--prefix S] STEP [STEP ...]
      Interleaves several producers on partition P (default 0), one step after the other:
      "NAME+N" makes producer NAME write N records (keys and values
      "<prefix>-<NAME>-<k>-<i>", k counting NAME's transactions) and flush them, so records
      land in step order; a transactional producer (transactional.id "<prefix>-<NAME>")
      begins a transaction first when none is open; "NAME:commit" / "NAME:abort" ends it.
      The producer named "plain" is not transactional (idempotent only). Prints
      {"producer", "key", "outcome": "commit"|"abort"|"plain", "seq": its place in the write
      order} per record once its fate is
      known. A transaction still open at the end is aborted (outcome "abort").

  hold-txn --bootstrap B --topic T --txn-id ID [--partition P] [--prefix S] --records N
      Begins a transaction, writes N records (keys and values "<prefix>-held-<i>"), flushes,
      prints {"open": N}, then waits for a line on stdin: "commit" or "abort" ends the
      transaction that way and prints {"outcome": ...}.

  produce-keys --bootstrap B --topic T --keys K [K ...] [--partitioner NAME]
      Writes one record per key (value = key) with librdkafka's partitioner NAME (default
      murmur2_random, the Java client's choice for keyed records), flushes, and prints
      {"key", "partition", "offset"} per record from its delivery report, in key order.

  consume --bootstrap B --topic T --group G [--isolation read_committed|read_uncommitted]
          --count N [--timeout-s S] [--assign-partitions K]
      Reads from the earliest offset until N records arrived or S seconds passed with none
      (default 10). Prints {"partition", "offset", "key", "value"} per record (key and value
      as UTF-8, or null), then {"done": count}. With --assign-partitions K, reads partitions
      0..K of T by assignment instead of joining group G (group joins on tansu take seconds).
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


def produce_steps(args):
    producers = {}
    open_txn = {}  # name -> (transaction number, keys written in it)
    counts = {}
    seq = {}  # key -> its place in the write order

    def producer(name):
        if name not in producers:
            conf = {"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "linger.ms": 5}
            if name != "plain":
                conf["transactional.id"] = f"{args.prefix}-{name}"
            p = Producer(conf)
            if name != "plain":
                p.init_transactions(30)
            producers[name] = p
        return producers[name]

    def report(name, keys, outcome):
        for key in keys:
            line = {"producer": name, "key": key, "outcome": outcome, "seq": seq[key]}
            print(json.dumps(line), flush=True)

    for step in args.steps:
        if "+" in step:
            name, n = step.split("+", 1)
            p = producer(name)
            if name != "plain" and name not in open_txn:
                p.begin_transaction()
                open_txn[name] = (counts.get(name, 0), [])
                counts[name] = counts.get(name, 0) + 1
            k = open_txn[name][0] if name != "plain" else counts.setdefault(name, 0)
            keys = []
            first = len(open_txn[name][1]) if name != "plain" else 0
            for i in range(first, first + int(n)):
                key = f"{args.prefix}-{name}-{k}-{i}"
                p.produce(args.topic, key=key.encode(), value=key.encode(), partition=args.partition)
                seq[key] = len(seq)
                keys.append(key)
            if p.flush(30) != 0:
                raise RuntimeError(f"{step}: records not delivered")
            if name == "plain":
                counts["plain"] += 1
                report(name, keys, "plain")
            else:
                open_txn[name][1].extend(keys)
        else:
            name, action = step.split(":", 1)
            _, keys = open_txn.pop(name)
            if action == "commit":
                producer(name).commit_transaction(30)
                report(name, keys, "commit")
            elif action == "abort":
                producer(name).abort_transaction(30)
                report(name, keys, "abort")
            else:
                raise ValueError(f"unknown step {step!r}")
    for name, (_, keys) in open_txn.items():
        producers[name].abort_transaction(30)
        report(name, keys, "abort")


def hold_txn(args):
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.txn_id,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(args.records):
        key = f"{args.prefix}-held-{i}".encode()
        producer.produce(args.topic, key=key, value=key, partition=args.partition)
    if producer.flush(30) != 0:
        raise RuntimeError("records not delivered")
    print(json.dumps({"open": args.records}), flush=True)
    line = sys.stdin.readline().strip()
    if line == "commit":
        producer.commit_transaction(30)
    elif line == "abort":
        producer.abort_transaction(30)
    else:
        raise ValueError(f"expected commit or abort on stdin, got {line!r}")
    print(json.dumps({"outcome": line}), flush=True)


def produce_keys(args):
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "partitioner": args.partitioner, "linger.ms": 5}
    )
    delivered = {}

    def report(err, msg):
        if err is not None:
            raise KafkaException(err)
        delivered[msg.key().decode()] = (msg.partition(), msg.offset())

    for key in args.keys:
        producer.produce(args.topic, key=key.encode(), value=key.encode(), on_delivery=report)
        producer.poll(0)
    if producer.flush(30) != 0:
        raise RuntimeError("records not delivered")
    for key in args.keys:
        partition, offset = delivered[key]
        print(json.dumps({"key": key, "partition": partition, "offset": offset}), flush=True)


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
    if args.assign_partitions:
        consumer.assign(
            [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(args.assign_partitions)]
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
    s = sub.add_parser("produce-steps")
    s.add_argument("--bootstrap", required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--partition", type=int, default=0)
    s.add_argument("--prefix", default="cf")
    s.add_argument("steps", nargs="+")
    h = sub.add_parser("hold-txn")
    h.add_argument("--bootstrap", required=True)
    h.add_argument("--topic", required=True)
    h.add_argument("--txn-id", required=True)
    h.add_argument("--partition", type=int, default=0)
    h.add_argument("--prefix", default="cf")
    h.add_argument("--records", type=int, required=True)
    k = sub.add_parser("produce-keys")
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--topic", required=True)
    k.add_argument("--partitioner", default="murmur2_random")
    k.add_argument("--keys", nargs="+", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--isolation", default="read_committed")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout-s", type=float, default=10.0)
    c.add_argument("--assign-partitions", type=int, default=0)
    args = parser.parse_args()
    try:
        if args.command == "produce-txn":
            if not getattr(args, "plan", None):
                parser.error("produce-txn needs at least one --commit N or --abort N")
            produce_txn(args)
        elif args.command == "produce-steps":
            produce_steps(args)
        elif args.command == "hold-txn":
            hold_txn(args)
        elif args.command == "produce-keys":
            produce_keys(args)
        else:
            consume(args)
    except Exception as e:  # reported to the Rust test, which fails with it
        print(f"confluent_peer: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
