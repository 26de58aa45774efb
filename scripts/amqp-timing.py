#!/usr/bin/env python3
"""Time-dependent AMQP behaviour of one broker, one line per observation, so that `diff` shows where two brokers
differ (the companion of amqp-semantics.py, whose scenarios need no clock): which connections the memory alarm
blocks and when they are told, how far a publish during it gets, a client silent while blocked; x-expires and
what resets it; publishes written just before connection.close / channel.close; the order and redelivered flag
of messages a closed consumer held; when a silent client is dropped (heartbeats at a 2 s interval, through a raw
socket and the pamqp codec); queue TTL and per-message expiration at the head of a queue. Takes ~55 s.

The memory alarm is raised the broker's own way, named by ALARM:
  rabbitmqctl  RabbitMQ: `rabbitmqctl set_vm_memory_high_watermark absolute 10000`, then back to 0.4
               (RABBITMQCTL, RABBITMQ_NODE and RABBITMQ_HOME name the node; defaults fit /tmp/rmq/start.sh)
  fill         Wharf started with `[amqp] memory_limit_bytes = 1048576`: a fourth connection queues 2.5 MiB, and
               a purge clears it
  none         skip the alarm

  python3 scripts/amqp-timing.py 5673 rabbitmqctl > rmq.txt
  python3 scripts/amqp-timing.py 5686 fill > wharf.txt
  diff rmq.txt wharf.txt
"""
import os
import socket
import subprocess
import sys
import time

import pika
from pamqp import body, commands, frame, header, heartbeat

PORT = int(sys.argv[1])
ALARM = sys.argv[2] if len(sys.argv) > 2 else "none"
PARAMS = pika.ConnectionParameters("127.0.0.1", PORT, heartbeat=0)


def connect(name="timing"):
    params = pika.ConnectionParameters(
        "127.0.0.1", PORT, heartbeat=0, client_properties={"connection_name": name}
    )
    connection = pika.BlockingConnection(params)
    events = []
    connection.add_on_connection_blocked_callback(
        lambda _c, m: events.append(f"blocked ({m.method.reason})")
    )
    connection.add_on_connection_unblocked_callback(lambda _c, _m: events.append("unblocked"))
    return connection, events


def fresh(ch, queue, bodies=(), arguments=None):
    """Declares `queue` (emptied, if it was left over) and publishes `bodies` to it."""
    ch.queue_declare(queue, arguments=arguments)
    ch.queue_purge(queue)
    for body in bodies:
        ch.basic_publish("", queue, body)


def depth(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def pump(connections, seconds):
    end = time.time() + seconds
    while time.time() < end:
        for c in connections:
            c.process_data_events(0.05)


def rabbitmqctl(*args):
    env = dict(os.environ, HOME=os.environ.get("RABBITMQ_HOME", "/tmp/rmq/node/rmq-home"))
    ctl = os.environ.get("RABBITMQCTL", "/usr/lib/rabbitmq/bin/rabbitmqctl")
    node = os.environ.get("RABBITMQ_NODE", "ref@localhost")
    subprocess.run([ctl, "-n", node, *args], env=env, capture_output=True, check=True)


def memory_alarm():
    """Three connections: one published before the alarm, one publishes during it, one only consumes."""
    before, before_events = connect("published-before")
    during, during_events = connect("publishes-during")
    consumer, consumer_events = connect("consumer")
    all_three = [before, during, consumer]
    ch = before.channel()
    fresh(ch, "timing.alarm", [b"before"])
    watch = consumer.channel()
    watch.basic_consume("timing.alarm", lambda *a: None, auto_ack=True)
    for q in ["timing.alarm.empty", "timing.alarm.body"]:
        fresh(watch, q)

    def routed():
        return [depth(watch, q) for q in ["timing.alarm.empty", "timing.alarm.body"]]

    idle = during.channel()
    raise_alarm()
    pump(all_three, 2)

    def line(stage):
        print(
            f"alarm {stage}: published before {before_events} | publishes during {during_events} "
            f"| consumer {consumer_events}"
        )

    line("raised")
    # An empty body, then a body: RabbitMQ blocks after a content frame, so the first is routed, not the second.
    idle.basic_publish("", "timing.alarm.empty", b"")
    idle.basic_publish("", "timing.alarm.body", b"during")
    pump(all_three, 2)
    line("after a publish")
    print(f"alarm: routed during it, an empty publish then one with a body: {routed()}")
    clear_alarm()
    pump(all_three, 2)
    line("cleared")
    print(f"alarm cleared: routed {routed()}")
    for q in ["timing.alarm.empty", "timing.alarm.body"]:
        watch.queue_delete(q)
    for c in all_three:
        c.close()


def raise_alarm():
    if ALARM == "rabbitmqctl":
        rabbitmqctl("set_vm_memory_high_watermark", "absolute", "10000")
        return None
    filler, _ = connect("filler")
    fill = filler.channel()
    fresh(fill, "timing.fill", [b"y" * 65536] * 40)
    return filler


def clear_alarm():
    if ALARM == "rabbitmqctl":
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    else:
        clear, _ = connect("clear")
        clear.channel().queue_delete("timing.fill")
        clear.close()


def silent_while_blocked():
    """A raw client with 1 s heartbeats publishes during the alarm, then sends nothing: kept while blocked (RabbitMQ
    pauses its heartbeat monitor), dropped some whole seconds after it is unblocked."""
    raise_alarm()
    time.sleep(1)
    client = RawClient(heartbeat_s=1, blocked_capability=True)
    client.send(frame.marshal(commands.Channel.Open(), 1))
    client.read_frame(5)
    t0 = time.time()
    client.send(
        frame.marshal(commands.Basic.Publish(exchange="", routing_key="timing.hb"), 1)
        + frame.marshal(header.ContentHeader(0, 1, commands.Basic.Properties()), 1)
        + frame.marshal(body.ContentBody(b"x"), 1)
    )
    seen, unblocked, cleared = [], None, False
    while time.time() - t0 < 15:
        if not cleared and time.time() - t0 > 5:
            cleared = True
            clear_alarm()
        try:
            f = client.read_frame(0.05)
        except socket.timeout:
            continue
        except ConnectionResetError:
            f = None
        if f is None:
            break
        name = type(f).__name__
        if name == "Unblocked":
            unblocked = time.time()
        if name != "Heartbeat":
            seen.append(name)
    dropped = round(time.time() - unblocked) if unblocked else None
    print(f"heartbeat 1 s, silent 5 s while blocked: {seen}, dropped {dropped} s after connection.unblocked")


def exists(queue):
    connection = pika.BlockingConnection(PARAMS)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return "exists"
    except pika.exceptions.ChannelClosedByBroker as e:
        return str(e.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def x_expires():
    """x-expires 1.5 s on six queues, each touched differently at 1.0 s (or a consumer from 0.2 s to 2.5 s)."""
    connection = pika.BlockingConnection(PARAMS)
    ch = connection.channel()
    args = {"x-expires": 1500}
    names = {n: f"timing.expires.{n}" for n in ["untouched", "get", "passive", "consumer", "redeclare", "publish"]}
    for q in names.values():
        ch.queue_declare(q, arguments=args)
    t0 = time.time()

    def at(t):
        if t0 + t > time.time():
            connection.sleep(t0 + t - time.time())

    consumer = pika.BlockingConnection(PARAMS)
    consumer_ch = consumer.channel()
    at(0.2)
    tag = consumer_ch.basic_consume(names["consumer"], lambda *a: None)
    at(1.0)
    ch.basic_get(names["get"])
    other = pika.BlockingConnection(PARAMS)
    other.channel().queue_declare(names["passive"], passive=True)
    other.close()
    ch.queue_declare(names["redeclare"], arguments=args)
    ch.basic_publish("", names["publish"], b"m")
    at(2.0)
    print("x-expires 1.5 s, at 2.0 s: " + " | ".join(f"{n} {exists(q)}" for n, q in names.items()))
    at(2.5)
    consumer_ch.basic_cancel(tag)
    at(3.3)
    print(f"x-expires: consumer cancelled at 2.5 s, at 3.3 s: {exists(names['consumer'])}")
    at(4.9)
    print(f"x-expires: consumer cancelled at 2.5 s, last touched 3.3 s, at 4.9 s: {exists(names['consumer'])}")
    consumer.close()
    connection.close()


def publishes_before_close():
    connection = pika.BlockingConnection(PARAMS)
    ch = connection.channel()
    fresh(ch, "timing.inflight", [b"x" * 100] * 500)
    connection.close()
    time.sleep(0.3)
    connection = pika.BlockingConnection(PARAMS)
    ch = connection.channel()
    print(f"publishes before connection.close: {depth(ch, 'timing.inflight')}")
    ch.queue_purge("timing.inflight")
    publisher = connection.channel()
    for _ in range(500):
        publisher.basic_publish("", "timing.inflight", b"x" * 100)
    publisher.close()
    print(f"publishes before channel.close: {depth(ch, 'timing.inflight')}")
    ch.queue_delete("timing.inflight")
    connection.close()


def held_by_a_closed_consumer():
    connection = pika.BlockingConnection(PARAMS)
    ch = connection.channel()
    fresh(ch, "timing.order", [str(i).encode() for i in range(5)])
    consumer = pika.BlockingConnection(PARAMS)
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=2)
    got = []
    cch.basic_consume("timing.order", lambda _c, _m, _p, body: got.append(body))
    while len(got) < 2:
        consumer.process_data_events(0.05)
    consumer.close()
    time.sleep(0.2)
    left = []
    while True:
        method, _, body = ch.basic_get("timing.order", auto_ack=True)
        if method is None:
            break
        left.append(f"{body.decode()}{'r' if method.redelivered else ''}")
    print(f"two held by a consumer whose connection closed, then: {' '.join(left)}")
    ch.queue_delete("timing.order")
    connection.close()


def ttl_at_the_head():
    """Queue TTL 500 ms behind a delivery held for 1 s; per-message expirations out of order."""
    connection = pika.BlockingConnection(PARAMS)
    ch = connection.channel()
    fresh(ch, "timing.ttl", [str(i).encode() for i in range(5)], arguments={"x-message-ttl": 500})
    consumer = pika.BlockingConnection(PARAMS)
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=1)
    got = []
    cch.basic_consume("timing.ttl", lambda c, m, _p, body: got.append((m.delivery_tag, body.decode())))
    consumer.process_data_events(0.2)
    consumer.sleep(1.0)
    cch.basic_ack(got[0][0])
    consumer.process_data_events(0.5)
    print(f"queue TTL 500 ms, first held 1 s then acked: delivered {[b for _, b in got]}, {depth(ch, 'timing.ttl')} left")
    consumer.close()
    ch.queue_delete("timing.ttl")
    fresh(ch, "timing.expiration")
    ch.basic_publish("", "timing.expiration", b"long", pika.BasicProperties(expiration="1500"))
    ch.basic_publish("", "timing.expiration", b"short", pika.BasicProperties(expiration="100"))
    connection.sleep(0.5)
    count = depth(ch, "timing.expiration")
    first = ch.basic_get("timing.expiration", auto_ack=True)[2]
    second = ch.basic_get("timing.expiration", auto_ack=True)[2]
    print(f"expiration 1500 ms then 100 ms, at 0.5 s: count {count}, get {first}, then {second}")
    ch.queue_delete("timing.expiration")
    connection.close()


class RawClient:
    """A hand-driven connection (pamqp frames over a socket), opened with `heartbeat_s` tuned."""

    def __init__(self, heartbeat_s, blocked_capability=False):
        self.s = socket.create_connection(("127.0.0.1", PORT))
        self.s.sendall(b"AMQP\x00\x00\x09\x01")
        self.buf = b""
        self.read_frame(5)
        capabilities = {"capabilities": {"connection.blocked": True}} if blocked_capability else {}
        self.send(frame.marshal(commands.Connection.StartOk(client_properties=capabilities, mechanism="PLAIN", response="\0guest\0guest"), 0))
        self.read_frame(5)
        self.send(frame.marshal(commands.Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=heartbeat_s), 0))
        self.send(frame.marshal(commands.Connection.Open(virtual_host="/"), 0))
        self.opened = time.time()
        self.read_frame(5)

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self, timeout):
        """The next frame; None once the socket closed; socket.timeout after `timeout` seconds without one."""
        self.s.settimeout(timeout)
        while True:
            try:
                n, _, f = frame.unmarshal(self.buf)
                self.buf = self.buf[n:]
                return f
            except Exception:
                pass
            data = self.s.recv(65536)
            if not data:
                return None
            self.buf += data


def silent_client(beats_until):
    """Seconds after opening (2 s heartbeats) at which the broker drops a client that sends heartbeats every
    second until `beats_until`, then nothing."""
    client = RawClient(heartbeat_s=2)
    t0 = client.opened
    next_beat = 1.0
    while time.time() - t0 < 20:
        try:
            if client.read_frame(0.05) is None:
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            break
        if next_beat <= beats_until and time.time() - t0 >= next_beat:
            client.send(frame.marshal(heartbeat.Heartbeat(), 0))
            next_beat += 1.0
    client.s.close()
    return round(time.time() - t0, 1)


def heartbeats():
    print(f"heartbeat 2 s, client silent from the start: dropped at {silent_client(0)} s")
    print(f"heartbeat 2 s, client beating until 3 s: dropped at {silent_client(3)} s")


if ALARM != "none":
    memory_alarm()
    silent_while_blocked()
x_expires()
publishes_before_close()
held_by_a_closed_consumer()
ttl_at_the_head()
heartbeats()
