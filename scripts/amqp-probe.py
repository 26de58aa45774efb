#!/usr/bin/env python3
"""Probes an AMQP 0-9-1 broker with raw frames and prints, one line per case, what it answered (class, method
and reply text of the first frame back). Run it against RabbitMQ and against Wharf and diff the two outputs:
every line that differs is a behaviour a client can notice.

    python3 scripts/amqp-probe.py 5673 > rabbitmq.txt   # e.g. the node scripts/rabbitmq-bench.sh starts
    python3 scripts/amqp-probe.py 5672 > wharf.txt
    diff rabbitmq.txt wharf.txt

Each case runs on a fresh connection (guest/guest, vhost /, channel 1 open). Only the standard library is used.
"""
import socket
import struct
import sys


def frame(channel, payload, kind=1):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def shortstr(x):
    return bytes([len(x)]) + x


def longstr(x):
    return struct.pack(">I", len(x)) + x


def table(entries):
    out = b""
    for key, kind, value in entries:
        out += shortstr(key) + kind
        if kind == b"S":
            out += longstr(value)
        elif kind == b"I":
            out += struct.pack(">i", value)
    return struct.pack(">I", len(out)) + out


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(2)
        self.s.sendall(b"AMQP\x00\x00\x09\x01")
        self.read()  # connection.start
        self.s.sendall(frame(0, struct.pack(">HH", 10, 11) + struct.pack(">I", 0) + shortstr(b"PLAIN")
                             + longstr(b"\x00guest\x00guest") + shortstr(b"en_US")))
        _, _, tune = self.read()
        channel_max, frame_max, _ = struct.unpack(">HIH", tune[4:12])
        self.s.sendall(frame(0, struct.pack(">HH", 10, 31) + struct.pack(">HIH", channel_max, frame_max, 0)))
        self.s.sendall(frame(0, struct.pack(">HH", 10, 40) + shortstr(b"/") + shortstr(b"") + b"\x00"))
        self.read()  # open-ok
        self.s.sendall(frame(1, struct.pack(">HH", 20, 10) + shortstr(b"")))
        self.read()  # channel.open-ok

    def read(self):
        try:
            head = self._exactly(7)
            if head is None:
                return None
            _, channel, size = struct.unpack(">BHI", head)
            body = self._exactly(size + 1)
            return None if body is None else (head[0], channel, body[:-1])
        except socket.timeout:
            return "timeout"

    def _exactly(self, n):
        data = b""
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def send(self, channel, class_id, method_id, args):
        self.s.sendall(frame(channel, struct.pack(">HH", class_id, method_id) + args))

    def reply(self):
        answer = self.read()
        if answer is None or answer == "timeout":
            return answer or "closed"
        _, channel, payload = answer
        class_id, method_id = struct.unpack(">HH", payload[:4])
        text = ""
        if (class_id, method_id) in ((10, 50), (20, 40)):  # connection.close, channel.close
            code = struct.unpack(">H", payload[4:6])[0]
            text = " %d %s" % (code, payload[7:7 + payload[6]].decode())
        return "ch%d %d.%d%s" % (channel, class_id, method_id, text)

    def call(self, channel, class_id, method_id, args):
        self.send(channel, class_id, method_id, args)
        return self.reply()


def queue_declare(name, args=(), passive=0, durable=0):
    return struct.pack(">H", 0) + shortstr(name) + bytes([passive | durable << 1]) + table(args)


def exchange_declare(name, kind, args=(), passive=0):
    return struct.pack(">H", 0) + shortstr(name) + shortstr(kind) + bytes([passive]) + table(args)


def queue_bind(queue, exchange, key):
    return struct.pack(">H", 0) + shortstr(queue) + shortstr(exchange) + shortstr(key) + b"\x00" + table([])


def consume(queue, tag=b"", bits=0):
    return struct.pack(">H", 0) + shortstr(queue) + shortstr(tag) + bytes([bits]) + table([])


def content(channel, body, expiration=None, user_id=None):
    """A content header (with the expiration and user-id properties if given) and one body frame."""
    flags, props = 0, b""
    if expiration is not None:
        flags |= 1 << 8
        props += shortstr(expiration)
    if user_id is not None:
        flags |= 1 << 4
        props += shortstr(user_id)
    header = struct.pack(">HHQH", 60, 0, len(body), flags) + props
    return frame(channel, header, kind=2) + frame(channel, body, kind=3)


def publish_and_content(c, exchange, key, body=b"x", bits=0, **props):
    c.send(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(key) + bytes([bits]))
    c.s.sendall(content(1, body, **props))
    return c.reply()


def publish_then(c, exchange, key, body=b"x"):
    """Publishes without waiting for an answer (there is none when all goes well)."""
    c.send(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(key) + b"\x00")
    c.s.sendall(content(1, body))
    return "sent"


def twice(first, second):
    return lambda c: "%s / %s" % (first(c), second(c))


def q(name, args=(), **kw):
    return lambda c: c.call(1, 50, 10, queue_declare(name, args, **kw))


S, I = b"S", b"I"
CASES = [
    ("queue x-queue-version 2", q(b"v2", [(b"x-queue-version", I, 2)])),
    ("queue x-queue-version 3", q(b"v3", [(b"x-queue-version", I, 3)])),
    ("queue x-queue-version 1 then 2", twice(q(b"v12", [(b"x-queue-version", I, 1)]),
                                             q(b"v12", [(b"x-queue-version", I, 2)]))),
    ("queue x-queue-mode bogus", q(b"m", [(b"x-queue-mode", S, b"bogus")])),
    ("queue x-queue-mode lazy then default", twice(q(b"m2", [(b"x-queue-mode", S, b"lazy")]),
                                                   q(b"m2", [(b"x-queue-mode", S, b"default")]))),
    ("queue x-queue-master-locator min-masters", q(b"ml", [(b"x-queue-master-locator", S, b"min-masters")])),
    ("queue x-foo", q(b"foo", [(b"x-foo", S, b"bar")])),
    ("queue x-consumer-timeout", q(b"ct", [(b"x-consumer-timeout", I, 5)])),
] + [("queue %s on classic" % key.decode(), q(b"other", [(key, kind, value)])) for key, kind, value in [
    (b"x-delivery-limit", I, 5), (b"x-max-in-memory-length", I, 5), (b"x-max-in-memory-bytes", I, 5),
    (b"x-quorum-initial-group-size", I, 5), (b"x-initial-cluster-size", I, 5),
    (b"x-stream-max-segment-size-bytes", I, 5), (b"x-max-age", S, b"1D"),
    (b"x-queue-leader-locator", S, b"balanced"), (b"x-dead-letter-strategy", S, b"at-least-once"),
]] + [("queue %s as %s" % (key.decode(), kind.decode()), q(b"typed", [(key, kind, value)])) for key, kind, value in [
    (b"x-message-ttl", S, b"100"), (b"x-expires", S, b"5"), (b"x-max-length", S, b"5"),
    (b"x-max-length-bytes", S, b"5"), (b"x-max-priority", S, b"5"), (b"x-queue-version", S, b"2"),
    (b"x-dead-letter-exchange", I, 5), (b"x-dead-letter-routing-key", I, 5), (b"x-overflow", I, 5),
    (b"x-queue-type", I, 5), (b"x-queue-mode", I, 5), (b"x-single-active-consumer", S, b"true"),
]] + [
    ("queue amq. prefix", q(b"amq.foo")),
    ("queue.declare on channel 0", lambda c: c.call(0, 50, 10, queue_declare(b"zero"))),
    ("queue.delete missing", lambda c: c.call(1, 50, 40, struct.pack(">H", 0) + shortstr(b"missing") + b"\x00")),
    ("queue.purge missing", lambda c: c.call(1, 50, 30, struct.pack(">H", 0) + shortstr(b"missing") + b"\x00")),
    ("queue.bind missing queue", lambda c: c.call(1, 50, 20, queue_bind(b"missing", b"amq.direct", b"k"))),
    ("queue.bind missing exchange", twice(q(b"qb"), lambda c: c.call(1, 50, 20, queue_bind(b"qb", b"missing", b"k")))),
    ("queue.unbind missing", lambda c: c.call(1, 50, 50, struct.pack(">H", 0) + shortstr(b"missing")
                                              + shortstr(b"missing") + shortstr(b"k") + table([]))),
    ("exchange type x-consistent-hash", lambda c: c.call(1, 40, 10, exchange_declare(b"ch", b"x-consistent-hash"))),
    ("exchange type bogus", lambda c: c.call(1, 40, 10, exchange_declare(b"bog", b"bogus"))),
    ("exchange alternate-exchange as I", lambda c: c.call(1, 40, 10, exchange_declare(
        b"ae", b"direct", [(b"alternate-exchange", I, 5)]))),
    ("exchange passive missing", lambda c: c.call(1, 40, 10, exchange_declare(b"missing", b"direct", passive=1))),
    ("exchange.delete missing", lambda c: c.call(1, 40, 20, struct.pack(">H", 0) + shortstr(b"missing") + b"\x00")),
    ("exchange.bind missing destination", lambda c: c.call(1, 40, 30, struct.pack(">H", 0) + shortstr(b"missing")
                                                           + shortstr(b"amq.direct") + shortstr(b"k") + b"\x00"
                                                           + table([]))),
    ("basic.publish missing exchange", lambda c: publish_and_content(c, b"missing", b"k")),
    ("basic.consume missing queue", lambda c: c.call(1, 60, 20, consume(b"missing"))),
    ("basic.consume on an exclusive consumer's queue", lambda c: "%s / %s / %s" % (
        c.call(1, 50, 10, queue_declare(b"ex")), c.call(1, 60, 20, consume(b"ex", b"a", 4)),
        c.call(1, 60, 20, consume(b"ex", b"b")))),
    ("basic.get missing queue", lambda c: c.call(1, 60, 70, struct.pack(">H", 0) + shortstr(b"missing") + b"\x00")),
    ("basic.ack unknown tag", lambda c: c.call(1, 60, 80, struct.pack(">Q", 7) + b"\x00")),
    ("basic.reject unknown tag", lambda c: c.call(1, 60, 90, struct.pack(">Q", 7) + b"\x01")),
    ("basic.cancel unknown consumer", lambda c: c.call(1, 60, 30, shortstr(b"nosuch") + b"\x00")),
    ("basic.qos prefetch_size", lambda c: c.call(1, 60, 10, struct.pack(">IHB", 10, 0, 0))),
    ("basic.qos global", lambda c: c.call(1, 60, 10, struct.pack(">IHB", 0, 10, 1))),
    ("basic.recover requeue", lambda c: c.call(1, 60, 110, b"\x01")),
    ("tx.commit without select", lambda c: c.call(1, 90, 20, b"")),
    ("tx.rollback without select", lambda c: c.call(1, 90, 30, b"")),
    ("confirm.select after tx.select", twice(lambda c: c.call(1, 90, 10, b""), lambda c: c.call(1, 85, 10, b"\x00"))),
    ("tx.select after confirm.select", twice(lambda c: c.call(1, 85, 10, b"\x00"), lambda c: c.call(1, 90, 10, b""))),
    ("channel.open twice", lambda c: c.call(1, 20, 10, shortstr(b""))),
    ("method on a channel never opened", lambda c: c.call(2, 50, 10, queue_declare(b"c2"))),
    ("access.request", lambda c: c.call(1, 30, 10, shortstr(b"/data") + bytes([0b11100]))),
    ("connection.update-secret", lambda c: c.call(0, 10, 70, longstr(b"secret") + shortstr(b"refresh"))),
    ("exchange redeclared with another type", twice(
        lambda c: c.call(1, 40, 10, exchange_declare(b"retype", b"direct")),
        lambda c: c.call(1, 40, 10, exchange_declare(b"retype", b"fanout")))),
    ("exchange amq.direct redeclared as fanout", lambda c: c.call(1, 40, 10, exchange_declare(b"amq.direct", b"fanout"))),
    ("exchange new amq. name", lambda c: c.call(1, 40, 10, exchange_declare(b"amq.mine", b"direct"))),
    ("exchange.delete if-unused with a binding", lambda c: "%s / %s / %s / %s" % (
        c.call(1, 40, 10, exchange_declare(b"used", b"direct")), c.call(1, 50, 10, queue_declare(b"qu")),
        c.call(1, 50, 20, queue_bind(b"qu", b"used", b"k")),
        c.call(1, 40, 20, struct.pack(">H", 0) + shortstr(b"used") + b"\x01"))),
    ("queue.delete if-empty with a message", lambda c: "%s / %s / %s" % (
        c.call(1, 50, 10, queue_declare(b"full")), publish_then(c, b"", b"full"),
        c.call(1, 50, 40, struct.pack(">H", 0) + shortstr(b"full") + b"\x02"))),
    ("queue.delete if-unused with a consumer", lambda c: "%s / %s / %s" % (
        c.call(1, 50, 10, queue_declare(b"busy")), c.call(1, 60, 20, consume(b"busy", b"c")),
        c.call(1, 50, 40, struct.pack(">H", 0) + shortstr(b"busy") + b"\x01"))),
    ("queue passive missing", q(b"missing", passive=1)),
    ("basic.get empty", twice(q(b"empty"), lambda c: c.call(1, 60, 70, struct.pack(">H", 0) + shortstr(b"empty") + b"\x00"))),
    ("basic.publish immediate", lambda c: publish_and_content(c, b"", b"nowhere", bits=2)),
    ("basic.publish mandatory unroutable", lambda c: publish_and_content(c, b"", b"nowhere", bits=1)),
    ("basic.publish to an internal exchange", twice(
        lambda c: c.call(1, 40, 10, struct.pack(">H", 0) + shortstr(b"inner") + shortstr(b"direct") + b"\x08" + table([])),
        lambda c: publish_and_content(c, b"inner", b"k"))),
    ("basic.publish expiration abc", lambda c: publish_and_content(c, b"", b"nowhere", expiration=b"abc")),
    ("basic.publish user_id not the login", lambda c: publish_and_content(c, b"", b"nowhere", user_id=b"mallory")),
    ("basic.consume x-priority as S", twice(q(b"prio"), lambda c: c.call(1, 60, 20, struct.pack(">H", 0) + shortstr(b"prio")
                                                                      + shortstr(b"") + b"\x00"
                                                                      + table([(b"x-priority", S, b"high")])))),
    ("basic.consume tag reused", lambda c: "%s / %s / %s" % (
        c.call(1, 50, 10, queue_declare(b"tags")), c.call(1, 60, 20, consume(b"tags", b"same")),
        c.call(1, 60, 20, consume(b"tags", b"same")))),
    ("basic.nack unknown tag", lambda c: c.call(1, 60, 120, struct.pack(">Q", 9) + b"\x00")),
    ("basic.ack multiple with tag 0 and nothing unacked", lambda c: "%s / %s" % (
        c.send(1, 60, 80, struct.pack(">Q", 0) + b"\x01"), c.call(1, 50, 10, queue_declare(b"after-ack0")))),
    ("heartbeat on channel 1", lambda c: (c.s.sendall(frame(1, b"", kind=8)), c.reply())[1]),
    ("content body without basic.publish", lambda c: (c.s.sendall(frame(1, b"x", kind=3)), c.reply())[1]),
    ("method where the content header belongs", lambda c: (
        c.send(1, 60, 40, struct.pack(">H", 0) + shortstr(b"") + shortstr(b"k") + b"\x00"),
        c.call(1, 50, 10, queue_declare(b"mid")))[1]),
    ("method where the content body belongs", lambda c: (
        c.send(1, 60, 40, struct.pack(">H", 0) + shortstr(b"") + shortstr(b"k") + b"\x00"),
        c.s.sendall(frame(1, struct.pack(">HHQH", 60, 0, 2, 0), kind=2)),
        c.call(1, 50, 10, queue_declare(b"mid")))[2]),
    ("content header of class 50", lambda c: (
        c.send(1, 60, 40, struct.pack(">H", 0) + shortstr(b"") + shortstr(b"k") + b"\x00"),
        c.s.sendall(frame(1, struct.pack(">HHQH", 50, 0, 1, 0), kind=2)), c.reply())[2]),
    ("client sends channel.flow-ok", lambda c: c.call(1, 20, 21, b"\x01")),
    ("client sends channel.close-ok unasked", lambda c: c.call(1, 20, 41, b"")),
    ("client sends queue.declare-ok", lambda c: c.call(1, 50, 11, shortstr(b"q") + struct.pack(">II", 0, 0))),
    ("client sends exchange.declare-ok", lambda c: c.call(1, 40, 11, b"")),
    ("client sends basic.get-empty", lambda c: c.call(1, 60, 72, shortstr(b""))),
    ("client sends basic.consume-ok", lambda c: c.call(1, 60, 21, shortstr(b"t"))),
    ("client sends tx.select-ok", lambda c: c.call(1, 90, 11, b"")),
    ("client sends confirm.select-ok", lambda c: c.call(1, 85, 11, b"")),
    ("queue.declare server-named with nowait", lambda c: "%s / %s" % (
        c.send(1, 50, 10, struct.pack(">H", 0) + shortstr(b"") + bytes([16]) + table([])),
        c.call(1, 50, 10, queue_declare(b"after-nowait")))),
]


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
    for name, case in CASES:
        try:
            answer = case(Client(port))
        except OSError as e:
            answer = "error %s" % e
        print("%s -> %s" % (name, answer))


if __name__ == "__main__":
    main()
