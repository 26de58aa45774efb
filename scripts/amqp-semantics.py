#!/usr/bin/env python3
"""Runs the same AMQP scenarios through pika against one broker and prints what it observed, one line per
check, with names, times and generated ids normalised, so that the output of two brokers can be compared
with diff:

    python3 scripts/amqp-semantics.py 5673 > rabbitmq.txt   # RabbitMQ on 5673
    python3 scripts/amqp-semantics.py 5672 > wharf.txt
    diff rabbitmq.txt wharf.txt

Where amqp-probe.py looks at error paths frame by frame, this looks at what applications see on the happy
path: counts in declare-ok / get-ok / purge-ok / delete-ok, the x-death headers after repeated
dead-lettering, requeue order, length limits, TTL, priorities, single active consumer, CC / BCC, topic and
headers matching corner cases, and the texts of channel errors. Needs pika (`pip install pika`).

Against RabbitMQ 3.10.8 and Wharf the outputs differ in one line, on purpose: `queue type quorum` (RabbitMQ
declares a quorum queue; Wharf refuses it until quorum queues land)."""

import re
import sys
import time
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 5672
RUN = uuid.uuid4().hex[:8]


def name(n):
    return f"sem{RUN}.{n}"


def sort_tables(value):
    """Field tables as dicts with sorted keys: clients read them as maps, and RabbitMQ's key order in an
    x-death entry depends on whether it was created or updated."""
    if isinstance(value, dict):
        return {k: sort_tables(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(sort_tables(v) for v in value)
    return value


def norm(value):
    text = repr(sort_tables(value)).replace(RUN, "R")
    text = re.sub(r"amq\.gen-[A-Za-z0-9_-]+", "amq.gen-X", text)
    text = re.sub(r"amq\.ctag-[A-Za-z0-9_-]+", "amq.ctag-X", text)
    text = re.sub(r"datetime\.datetime\([^)]*\)", "TIME", text)
    text = re.sub(r"'time': \d+", "'time': T", text)
    return text


def out(label, value):
    print(f"{label}: {norm(value)}", flush=True)


def connect():
    params = pika.ConnectionParameters("127.0.0.1", PORT, credentials=pika.PlainCredentials("guest", "guest"))
    return pika.BlockingConnection(params)


conn = connect()


def pump(seconds):
    """Dispatches deliveries and returns for `seconds` (process_data_events returns after the first events)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        conn.process_data_events(time_limit=max(0.0, deadline - time.time()))


def channel():
    """A new channel; when the broker closed the connection meanwhile, says so and reconnects."""
    global conn
    try:
        return conn.channel()
    except pika.exceptions.ConnectionClosedByBroker as e:
        out("connection closed", (e.reply_code, e.reply_text))
        conn = connect()
        return conn.channel()


def attempt(label, fn):
    """Runs fn on a fresh channel; prints its result or the channel error."""
    ch = channel()
    closed = []
    ch._impl.add_on_close_callback(lambda _c, reason: closed.append(reason))
    try:
        out(label, fn(ch))
    except ChannelClosedByBroker as e:
        out(label, ("closed", e.reply_code, e.reply_text))
        return
    except pika.exceptions.ChannelWrongStateError:
        reason = closed[0] if closed else None
        out(label, ("closed", getattr(reason, "reply_code", None), getattr(reason, "reply_text", None)))
        return
    except pika.exceptions.ConnectionClosedByBroker as e:
        global conn
        out(label, ("connection closed", e.reply_code, e.reply_text))
        conn = connect()
        return
    try:
        ch.close()
    except Exception:
        pass


def drain(ch, queue, n=100, ack=True):
    got = []
    for _ in range(n):
        m, p, b = ch.basic_get(queue, auto_ack=ack)
        if m is None:
            break
        got.append(b.decode())
    return got


def drain_flagged(ch, queue):
    """Takes every message of `queue` (auto-ack) as (body, redelivered), then deletes the queue."""
    got = []
    for _ in range(100):
        m, _, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            break
        got.append((b.decode(), m.redelivered))
    ch.queue_delete(queue)
    return got


def queue_gone(ch, q):
    """'still there', or the 404 a passive declare of `q` gets."""
    try:
        ch.queue_declare(q, passive=True)
        return "still there"
    except ChannelClosedByBroker as e:
        return (e.reply_code, e.reply_text)


def wait_get(ch, queue, timeout=3.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m, p, b = ch.basic_get(queue, auto_ack=True)
        if m is not None:
            return m, p, b
        conn.sleep(0.02)
    return None, None, None


def wait_get_noack(ch, queue, timeout=3.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m, p, b = ch.basic_get(queue, auto_ack=False)
        if m is not None:
            return m, p, b
        conn.sleep(0.02)
    return None, None, None


def headers_of(p):
    h = dict(p.headers or {})
    return {k: h[k] for k in sorted(h)}


def filled(ch, label, n, **declare):
    """A new queue holding m0 .. m(n-1)."""
    q = name(label)
    ch.queue_declare(q, **declare)
    for i in range(n):
        ch.basic_publish("", q, f"m{i}".encode())
    return q


def depth_after(ch, q, arguments=None, properties=None, wait=0.0):
    """Declares `q`, publishes one message to it, waits, and says how many messages it holds."""
    ch.queue_declare(q, arguments=arguments)
    ch.basic_publish("", q, b"x", properties)
    conn.sleep(wait)
    depth = ch.queue_declare(q, passive=True).method.message_count
    ch.queue_delete(q)
    return depth


# --- counts ---------------------------------------------------------------------------------------------
def counts(ch):
    q = filled(ch, "counts", 5)
    c2 = channel()
    m, _, _ = c2.basic_get(q)  # one unacked
    ok = ch.queue_declare(q, passive=True).method
    res = [("declare-ok", ok.message_count, ok.consumer_count)]
    m2, _, _ = ch.basic_get(q)
    res.append(("get-ok count", m2.message_count))
    ch.basic_ack(m2.delivery_tag)
    res.append(("purge-ok", ch.queue_purge(q).method.message_count))
    c2.close()  # the unacked one comes back
    conn.sleep(0.1)
    res.append(("after close", ch.queue_declare(q, passive=True).method.message_count))
    res.append(("delete-ok", ch.queue_delete(q).method.message_count))
    return res


attempt("counts", counts)


# --- requeue order --------------------------------------------------------------------------------------
def requeue_order(ch):
    q = filled(ch, "requeue", 6)
    tags = []
    for _ in range(4):
        m, _, _ = ch.basic_get(q)
        tags.append(m.delivery_tag)
    ch.basic_nack(tags[1], requeue=True)  # m1
    ch.basic_nack(tags[3], multiple=True, requeue=True)  # m0, m2, m3
    return drain_flagged(ch, q)


attempt("requeue order", requeue_order)


def recover(ch):
    q = filled(ch, "recover", 3)
    got = []
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(q, lambda c, m, p, b: got.append((b.decode(), m.redelivered, m.delivery_tag)))
    pump(0.3)
    ch.basic_recover(requeue=True)
    pump(0.3)
    ch.queue_delete(q)
    return got


attempt("recover requeue", recover)


# --- dead lettering -------------------------------------------------------------------------------------
def x_death_repeated(ch):
    dlx = name("dlx")
    ch.exchange_declare(dlx, "direct", auto_delete=False)
    a, b = name("dla"), name("dlb")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "to-b"})
    ch.queue_declare(b, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "to-a"})
    ch.queue_bind(a, dlx, "to-a")
    ch.queue_bind(b, dlx, "to-b")
    ch.basic_publish("", a, b"x", pika.BasicProperties(expiration="60000", headers={"keep": 1}))
    res = []
    queue = a
    m, p, _ = wait_get_noack(ch, queue)
    for _ in range(4):
        ch.basic_reject(m.delivery_tag, requeue=False)
        queue = b if queue == a else a
        m, p, _ = wait_get_noack(ch, queue)
        res.append((m.exchange, m.routing_key, m.redelivered, p.expiration, headers_of(p)))
    ch.basic_ack(m.delivery_tag)
    for q in (a, b):
        ch.queue_delete(q)
    ch.exchange_delete(dlx)
    return res


attempt("x-death repeated", x_death_repeated)


def x_death_reasons(ch):
    dead = name("dead")
    ch.queue_declare(dead)
    res = []
    # expired by queue TTL
    q = name("ttlq")
    ch.queue_declare(
        q, arguments={"x-message-ttl": 10, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    ch.basic_publish("", q, b"ttl")
    m, p, _ = wait_get(ch, dead)
    res.append(("queue ttl", m.routing_key, p.expiration, headers_of(p)))
    # expired by per-message expiration
    ch.basic_publish("", q, b"exp", pika.BasicProperties(expiration="5"))
    m, p, _ = wait_get(ch, dead)
    res.append(("message ttl", p.expiration, headers_of(p)))
    # maxlen (drop-head)
    q2 = name("maxlen")
    ch.queue_declare(
        q2, arguments={"x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    ch.basic_publish("", q2, b"first")
    ch.basic_publish("", q2, b"second")
    m, p, b = wait_get(ch, dead)
    res.append(("maxlen", b, headers_of(p)))
    # nack without requeue, no routing key override: the original key
    q3 = name("nack")
    ch.queue_declare(q3, arguments={"x-dead-letter-exchange": "amq.fanout"})
    ch.queue_bind(dead, "amq.fanout")
    ch.basic_publish("", q3, b"nacked")
    m, _, _ = ch.basic_get(q3)
    ch.basic_nack(m.delivery_tag, requeue=False)
    m, p, b = wait_get(ch, dead)
    res.append(("nack", m.exchange, m.routing_key, headers_of(p)))
    ch.queue_unbind(dead, "amq.fanout")
    for x in (q, q2, q3, dead):
        ch.queue_delete(x)
    return res


attempt("x-death reasons", x_death_reasons)


def ttl_cycle(ch):
    """A message that expires in a queue dead-lettering to itself: RabbitMQ drops the cycle."""
    q = name("cycle")
    return depth_after(
        ch, q, {"x-message-ttl": 20, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q}, wait=0.5
    )


attempt("ttl cycle", ttl_cycle)


def reject_cycle(ch):
    """Rejected back into itself: not a cycle to RabbitMQ (a rejection breaks it); the count grows."""
    q = name("rcycle")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    ch.basic_publish("", q, b"loop")
    for _ in range(3):
        m, _, _ = wait_get_noack(ch, q)
        ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, _ = wait_get(ch, q)
    ch.queue_delete(q)
    return headers_of(p)


attempt("reject cycle", reject_cycle)


# --- length limits --------------------------------------------------------------------------------------
def overflow_reject_publish(ch):
    q = name("rp")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    res = []
    for i in range(4):
        try:
            ch.basic_publish("", q, f"m{i}".encode())
            res.append("ack")
        except pika.exceptions.NackError:
            res.append("nack")
    res.append(drain(ch, q))
    ch.queue_delete(q)
    return res


attempt("reject-publish", overflow_reject_publish)


def max_length_bytes(ch):
    q = name("mlb")
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for b in (b"12345", b"6789", b"abc", b"", b"0123456789x"):
        ch.basic_publish("", q, b)
    got = drain(ch, q)
    ch.queue_delete(q)
    return got


attempt("max-length-bytes", max_length_bytes)


attempt("max-length 0", lambda ch: depth_after(ch, name("ml0"), {"x-max-length": 0}))


# --- TTL ------------------------------------------------------------------------------------------------
def ttl_zero(ch):
    q = name("ttl0")
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"no consumer")
    conn.sleep(0.1)
    n = ch.queue_declare(q, passive=True).method.message_count
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b.decode()), auto_ack=True)
    ch.basic_publish("", q, b"consumer")
    pump(0.3)
    ch.queue_delete(q)
    return (n, got)


attempt("ttl 0", ttl_zero)


def expiration_kept(ch):
    q = name("expkept")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="60000"))
    m, p, _ = ch.basic_get(q, auto_ack=True)
    ch.queue_delete(q)
    return p.expiration


attempt("expiration kept", expiration_kept)


def expiration_refused(value):
    return lambda ch: depth_after(ch, name("badexp"), properties=pika.BasicProperties(expiration=value), wait=0.2)


attempt("bad expiration", expiration_refused("soon"))
attempt("negative expiration", expiration_refused("-1"))


# --- priorities -----------------------------------------------------------------------------------------
def priorities(ch):
    q = name("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for i, p in enumerate([None, 1, 9, 5, 0, 3, 5]):
        ch.basic_publish("", q, f"m{i}p{p}".encode(), pika.BasicProperties(priority=p))
    got = drain(ch, q)
    ch.queue_delete(q)
    return got


attempt("priorities", priorities)


def priority_args(ch):
    res = []
    for v in (0, 255, 256, -1):
        c = channel()
        try:
            c.queue_declare(name(f"pa{v}"), arguments={"x-max-priority": v})
            res.append((v, "ok"))
            c.queue_delete(name(f"pa{v}"))
            c.close()
        except ChannelClosedByBroker as e:
            res.append((v, e.reply_code, e.reply_text))
    return res


attempt("priority args", priority_args)


# --- single active consumer -----------------------------------------------------------------------------
def single_active(ch):
    q = name("sac")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    got = []
    c1, c2 = channel(), channel()
    t1 = c1.basic_consume(q, lambda c, m, p, b: got.append(("c1", b.decode())), auto_ack=True)
    c2.basic_consume(q, lambda c, m, p, b: got.append(("c2", b.decode())), auto_ack=True)
    for i in range(3):
        ch.basic_publish("", q, f"a{i}".encode())
    pump(0.3)
    c1.basic_cancel(t1)
    for i in range(3):
        ch.basic_publish("", q, f"b{i}".encode())
    pump(0.3)
    ok = ch.queue_declare(q, passive=True).method
    ch.queue_delete(q)
    return (got, ok.consumer_count)


attempt("single active consumer", single_active)


def exclusive_consume(ch):
    q = name("excl")
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    c = channel()
    try:
        c.basic_consume(q, lambda *a: None, exclusive=True)
        return "ok"
    except ChannelClosedByBroker as e:
        return (e.reply_code, e.reply_text)
    finally:
        ch.queue_delete(q)


attempt("exclusive consume", exclusive_consume)


def consume_after_exclusive(ch):
    q = name("excl2")
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    c = channel()
    try:
        c.basic_consume(q, lambda *a: None)
        return "ok"
    except ChannelClosedByBroker as e:
        return (e.reply_code, e.reply_text)
    finally:
        ch.queue_delete(q)


attempt("consume after exclusive", consume_after_exclusive)




# --- routing ----------------------------------------------------------------------------------------------
def routed(ch, kind, bindings, messages):
    """Binds one queue per entry of `bindings` (label: (key, arguments)) to a new exchange of `kind`,
    publishes `messages` ((routing key, body, headers)), and says what each queue received."""
    x = name(kind)
    ch.exchange_declare(x, kind)
    queues = {}
    for label, (key, arguments) in bindings.items():
        q = name(f"{kind}.{len(queues)}")
        ch.queue_declare(q)
        ch.queue_bind(q, x, key, arguments=arguments)
        queues[label] = q
    for key, body, headers in messages:
        ch.basic_publish(x, key, body.encode(), pika.BasicProperties(headers=headers))
    conn.sleep(0.1)
    res = {label: drain(ch, q) for label, q in queues.items()}
    for q in queues.values():
        ch.queue_delete(q)
    ch.exchange_delete(x)
    return res


TOPIC_PATTERNS = ["#", "*", "a.*", "a.#", "#.b", "a.#.b", "*.*", "#.#", "a.*.#", "", "a..b", "a.*.b", "*.#.*"]
TOPIC_KEYS = ["", "a", "a.b", "a.x.b", "a.x.y.b", "b", ".", "a.", "a..b", "x.y"]
attempt(
    "topic corners",
    lambda ch: routed(ch, "topic", {p: (p, None) for p in TOPIC_PATTERNS}, [(k, k, None) for k in TOPIC_KEYS]),
)

HEADER_BINDINGS = {
    "all": {"x-match": "all", "a": 1, "b": "two"},
    "any": {"x-match": "any", "a": 1, "b": "two"},
    "all-x": {"x-match": "all-with-x", "x-k": "v"},
    "any-x": {"x-match": "any-with-x", "x-k": "v"},
    "all-xignored": {"x-match": "all", "x-k": "v"},
    "empty-all": {"x-match": "all"},
    "empty-any": {"x-match": "any"},
    "default": {"a": 1},
    "void": {"x-match": "all", "n": None},
}
HEADER_MESSAGES = {
    "a1": {"a": 1},
    "a1b2": {"a": 1, "b": "two"},
    "xk": {"x-k": "v"},
    "none": None,
    "nvoid": {"n": None},
}
attempt(
    "headers corners",
    lambda ch: routed(
        ch,
        "headers",
        {label: ("", args) for label, args in HEADER_BINDINGS.items()},
        [("", body, h) for body, h in HEADER_MESSAGES.items()],
    ),
)


def bad_x_match(ch):
    x = name("hdrbad")
    ch.exchange_declare(x, "headers")
    q = name("hdrbadq")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "", arguments={"x-match": "some"})
    return "ok"


attempt("bad x-match", bad_x_match)


def cc_bcc(ch):
    a, b, c = name("cca"), name("ccb"), name("ccc")
    for q in (a, b, c):
        ch.queue_declare(q)
    ch.basic_publish("", a, b"m", pika.BasicProperties(headers={"CC": [b], "BCC": [c], "other": 1}))
    res = []
    for q in (a, b, c):
        m, p, _ = wait_get(ch, q)
        res.append((q, m and m.routing_key, p and headers_of(p)))
    for q in (a, b, c):
        ch.queue_delete(q)
    return res


attempt("cc bcc", cc_bcc)


def cc_string(ch):
    a = name("ccs")
    ch.queue_declare(a)
    ch.basic_publish("", a, b"m", pika.BasicProperties(headers={"CC": "b"}))
    conn.sleep(0.2)
    return drain(ch, a)


attempt("CC as a string", cc_string)


def mandatory_return(ch):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, m.reply_text, m.exchange, m.routing_key)))
    ch.basic_publish("amq.direct", "nowhere", b"x", mandatory=True)
    x = name("ae")
    ch.exchange_declare(x, "fanout", arguments={"alternate-exchange": "amq.fanout"})
    ch.basic_publish(x, "k", b"x", mandatory=True)  # the AE has no bindings either
    pump(0.3)
    ch.exchange_delete(x)
    return returned


attempt("mandatory return", mandatory_return)


# --- queue declare corners --------------------------------------------------------------------------------
def server_named(ch):
    ok = ch.queue_declare("", exclusive=True).method
    return (ok.queue[:8], ok.message_count, ok.consumer_count)


attempt("server named", server_named)


attempt("queue name 255", lambda ch: ch.queue_declare("q" * 255).method.queue == "q" * 255)


def amq_prefix(ch):
    ch.queue_declare("amq.mine")
    return "ok"


attempt("amq. queue", amq_prefix)
attempt("amq. queue passive", lambda ch: ch.queue_declare("amq.mine", passive=True) and "ok")


def exclusive_other_connection(ch):
    q = name("exclq")
    ch.queue_declare(q, exclusive=True)
    other = connect()
    c = other.channel()
    res = []
    for what, fn in (
        ("passive", lambda c: c.queue_declare(q, passive=True)),
        ("get", lambda c: c.basic_get(q)),
        ("bind", lambda c: c.queue_bind(q, "amq.fanout")),
        ("purge", lambda c: c.queue_purge(q)),
        ("delete", lambda c: c.queue_delete(q)),
    ):
        try:
            fn(c)
            res.append((what, "ok"))
        except ChannelClosedByBroker as e:
            res.append((what, e.reply_code, e.reply_text))
            c = other.channel()
    other.close()
    return res


attempt("exclusive from another connection", exclusive_other_connection)


def delete_if(ch):
    q = name("delif")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    conn.sleep(0.05)
    res = []
    try:
        ch.queue_delete(q, if_empty=True)
        res.append("deleted")
    except ChannelClosedByBroker as e:
        res.append((e.reply_code, e.reply_text))
    ch = channel()
    ch.basic_consume(q, lambda *a: None)
    c = channel()
    try:
        c.queue_delete(q, if_unused=True)
        res.append("deleted")
    except ChannelClosedByBroker as e:
        res.append((e.reply_code, e.reply_text))
    ch.queue_delete(q)
    return res


attempt("delete if", delete_if)


def exchange_delete_if_unused(ch):
    x = name("xdel")
    ch.exchange_declare(x, "direct")
    q = name("xdelq")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    try:
        ch.exchange_delete(x, if_unused=True)
        return "deleted"
    except ChannelClosedByBroker as e:
        return (e.reply_code, e.reply_text)


attempt("exchange delete if-unused", exchange_delete_if_unused)
attempt("exchange delete missing", lambda ch: ch.exchange_delete(name("nope")) and "ok")
attempt("queue delete missing", lambda ch: ch.queue_delete(name("nope")).method.message_count)
attempt("purge missing", lambda ch: ch.queue_purge(name("nope")))
attempt("bind missing exchange", lambda ch: ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue, name("nox")))
attempt("bind missing queue", lambda ch: ch.queue_bind(name("noq"), "amq.direct"))
attempt("get missing", lambda ch: ch.basic_get(name("noq")))
attempt("publish missing exchange", lambda ch: (ch.basic_publish(name("nox"), "k", b"x"), conn.sleep(0.2), ch.is_open)[2])
attempt("exchange type change", lambda ch: (ch.exchange_declare(name("xt"), "direct"), ch.exchange_declare(name("xt"), "fanout")))
attempt("exchange bad type", lambda ch: ch.exchange_declare(name("xbt"), "bogus"))
attempt("exchange durable change", lambda ch: (ch.exchange_declare(name("xd"), "direct"), ch.exchange_declare(name("xd"), "direct", durable=True)))
attempt("queue durable change", lambda ch: (ch.queue_declare(name("qd")), ch.queue_declare(name("qd"), durable=True)))
attempt("queue auto-delete change", lambda ch: (ch.queue_declare(name("qa")), ch.queue_declare(name("qa"), auto_delete=True)))
attempt("queue ttl change", lambda ch: (ch.queue_declare(name("qt"), arguments={"x-message-ttl": 5}), ch.queue_declare(name("qt"), arguments={"x-message-ttl": 6})))
attempt("queue ttl removed", lambda ch: (ch.queue_declare(name("qt2"), arguments={"x-message-ttl": 5}), ch.queue_declare(name("qt2"))))
attempt("queue ttl added", lambda ch: (ch.queue_declare(name("qt3")), ch.queue_declare(name("qt3"), arguments={"x-message-ttl": 5})))
attempt("queue ttl negative", lambda ch: ch.queue_declare(name("qt4"), arguments={"x-message-ttl": -1}))
attempt("queue expires 0", lambda ch: ch.queue_declare(name("qe0"), arguments={"x-expires": 0}))
attempt("queue max-length negative", lambda ch: ch.queue_declare(name("qml"), arguments={"x-max-length": -1}))
attempt("queue overflow bad", lambda ch: ch.queue_declare(name("qo"), arguments={"x-overflow": "explode"}))
attempt("queue sac bad", lambda ch: ch.queue_declare(name("qs"), arguments={"x-single-active-consumer": 1}))
attempt("queue dlrk without dlx", lambda ch: ch.queue_declare(name("qdl"), arguments={"x-dead-letter-routing-key": "k"}))
attempt("queue type quorum", lambda ch: ch.queue_declare(name("qq"), durable=True, arguments={"x-queue-type": "quorum"}).method.queue)
attempt("ack unknown tag", lambda ch: (ch.basic_ack(99), conn.sleep(0.2), ch.is_open)[2])
def ack_twice(ch):
    q = name("acktwice")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x")
    m, _, _ = wait_get_noack(ch, q)
    ch.basic_ack(m.delivery_tag)
    ch.basic_ack(m.delivery_tag)
    conn.sleep(0.2)
    return ch.is_open


attempt("ack twice", ack_twice)
attempt("ack tag 0 multiple", lambda ch: (ch.basic_ack(0, multiple=True), conn.sleep(0.2), ch.is_open)[2])
attempt("nack tag 0 multiple", lambda ch: (ch.basic_nack(0, multiple=True), conn.sleep(0.2), ch.is_open)[2])


# --- consumers, prefetch, cancel ---------------------------------------------------------------------------
def consumer_priorities(ch):
    q = filled(ch, "cprio", 0)
    got = []
    ch.basic_qos(prefetch_count=2)
    for label, prio in (("low", 0), ("high", 10), ("mid", 5)):
        ch.basic_consume(
            q, lambda c, m, p, b, label=label: got.append((label, b.decode())), arguments={"x-priority": prio}
        )
    for i in range(7):
        ch.basic_publish("", q, f"m{i}".encode())
    pump(0.3)
    ch.queue_delete(q)
    return got


attempt("consumer priorities", consumer_priorities)


def qos_global(ch):
    """prefetch 3 per consumer and 4 for the channel (global): two consumers take 4 between them."""
    q = filled(ch, "qosg", 10)
    ch.basic_qos(prefetch_count=3)
    ch.basic_qos(prefetch_count=4, global_qos=True)
    got = []
    for label in ("a", "b"):
        ch.basic_consume(q, lambda c, m, p, b, label=label: got.append(label))
    pump(0.3)
    counts = sorted((label, got.count(label)) for label in set(got))
    ch.queue_delete(q)
    return counts


attempt("qos global", qos_global)


def qos_after_consume(ch):
    """A new per-consumer prefetch applies to consumers created after it, not before."""
    q = filled(ch, "qosa", 10)
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append("first"))
    ch.basic_qos(prefetch_count=5)
    ch.basic_consume(q, lambda c, m, p, b: got.append("second"))
    pump(0.3)
    counts = (got.count("first"), got.count("second"))
    ch.queue_delete(q)
    return counts


attempt("qos after consume", qos_after_consume)


def cancel_keeps_unacked(ch):
    q = filled(ch, "cancel", 3)
    tags = []
    ch.basic_qos(prefetch_count=2)
    ctag = ch.basic_consume(q, lambda c, m, p, b: tags.append(m.delivery_tag))
    pump(0.2)
    ch.basic_cancel(ctag)
    before = ch.queue_declare(q, passive=True).method.message_count
    ch.basic_ack(tags[-1], multiple=True)
    pump(0.1)
    after = ch.queue_declare(q, passive=True).method
    ch.queue_delete(q)
    return (len(tags), before, after.message_count, after.consumer_count, ch.is_open)


attempt("cancel keeps unacked", cancel_keeps_unacked)


def redelivery_after_close(ch):
    q = filled(ch, "redeliv", 4)
    other = channel()
    other.basic_qos(prefetch_count=10)
    other.basic_consume(q, lambda c, m, p, b: None)
    pump(0.2)
    other.close()
    pump(0.1)
    return drain_flagged(ch, q)


attempt("redelivery after close", redelivery_after_close)


def auto_delete_queue(ch):
    q = name("autodel")
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"x")
    ctag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    pump(0.1)
    ch.basic_cancel(ctag)
    pump(0.1)
    return queue_gone(ch, q)


attempt("auto-delete queue", auto_delete_queue)


def auto_delete_never_consumed(ch):
    q = name("autodel2")
    ch.queue_declare(q, auto_delete=True)
    pump(0.1)
    return ch.queue_declare(q, passive=True).method.queue


attempt("auto-delete never consumed", auto_delete_never_consumed)


def exclusive_gone_with_connection(ch):
    other = connect()
    q = name("exclgone")
    other.channel().queue_declare(q, exclusive=True)
    other.close()
    conn.sleep(0.2)
    return queue_gone(ch, q)


attempt("exclusive gone with its connection", exclusive_gone_with_connection)


def cancel_on_delete(ch):
    q = filled(ch, "cancelnotify", 0)
    events = []
    c = channel()
    c.basic_consume(q, lambda *a: None)
    c._impl.add_on_cancel_callback(lambda frame: events.append(("cancelled", frame.method.NAME)))
    ch.queue_delete(q)
    pump(0.3)
    return (events, c.is_open)


attempt("consumer cancelled by queue delete", cancel_on_delete)


# --- exchanges ---------------------------------------------------------------------------------------------
def exchange_to_exchange(ch):
    up, down = name("e2e.up"), name("e2e.down")
    ch.exchange_declare(up, "topic")
    ch.exchange_declare(down, "direct")
    ch.exchange_bind(down, up, "a.*")
    ch.exchange_bind(up, down, "loop")  # a cycle: delivered once all the same
    q = name("e2eq")
    ch.queue_declare(q)
    ch.queue_bind(q, down, "a.b")
    ch.queue_bind(q, down, "loop")
    ch.queue_bind(q, up, "#")  # the queue reached by two paths: one copy
    for key in ("a.b", "a.c", "loop"):
        ch.basic_publish(up, key, key.encode())
    conn.sleep(0.1)
    first = drain(ch, q)
    ch.exchange_unbind(down, up, "a.*")
    ch.basic_publish(up, "a.b", b"after unbind")
    conn.sleep(0.1)
    second = drain(ch, q)
    for x in (up, down):
        ch.exchange_delete(x)
    ch.queue_delete(q)
    return (first, second)


attempt("exchange to exchange", exchange_to_exchange)


def auto_delete_exchange(ch):
    x = name("xautodel")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = name("xautodelq")
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.queue_unbind(q, x)
    try:
        ch.exchange_declare(x, "fanout", passive=True)
        return "still there"
    except ChannelClosedByBroker as e:
        return (e.reply_code, e.reply_text)


attempt("auto-delete exchange", auto_delete_exchange)


def duplicate_routes(ch):
    """One copy per queue however many bindings match."""
    q = name("dups")
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.topic", "a.*")
    ch.queue_bind(q, "amq.topic", "#")
    ch.queue_bind(q, "amq.topic", "a.b")
    ch.queue_bind(q, "amq.topic", "a.b")  # twice: one binding
    ch.basic_publish("amq.topic", "a.b", b"once")
    conn.sleep(0.1)
    first = drain(ch, q)
    ch.queue_unbind(q, "amq.topic", "a.*")
    ch.queue_unbind(q, "amq.topic", "#")
    ch.queue_unbind(q, "amq.topic", "a.b")
    ch.basic_publish("amq.topic", "a.b", b"unbound")
    conn.sleep(0.1)
    second = drain(ch, q)
    ch.queue_delete(q)
    return (first, second)


attempt("duplicate routes", duplicate_routes)


def internal_exchange(ch):
    x = name("internal")
    ch.exchange_declare(x, "fanout", internal=True)
    ch.basic_publish(x, "", b"x")
    conn.sleep(0.2)
    return ch.queue_declare("", exclusive=True).method.message_count  # raises with the close reason


attempt("publish to internal exchange", internal_exchange)


def depth_after_publish_to(ch, exchange):
    q = name("viaexchange")
    ch.queue_declare(q)
    ch.basic_publish(exchange, q, b"x")
    conn.sleep(0.1)
    n = ch.queue_declare(q, passive=True).method.message_count
    ch.queue_delete(q)
    return n


attempt("publish to amq.default", lambda ch: depth_after_publish_to(ch, "amq.default"))
attempt("bind to the default exchange", lambda ch: ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue, ""))
attempt("bind to amq.default", lambda ch: ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue, "amq.default"))
attempt("delete the default exchange", lambda ch: ch.exchange_delete(""))
attempt("delete amq.direct", lambda ch: ch.exchange_delete("amq.direct"))
attempt("exchange passive missing", lambda ch: ch.exchange_declare(name("nox"), passive=True))
attempt("fanout ignores key", lambda ch: routed(ch, "fanout", {"q": ("ignored", None)}, [("any", "m", None)]))


# --- transactions and confirms -----------------------------------------------------------------------------
def tx_ack_rollback(ch):
    q = filled(ch, "txack", 2)
    ch.tx_select()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()
    still_unacked = ch.queue_declare(q, passive=True).method.message_count
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()
    m2, _, _ = ch.basic_get(q)
    ch.basic_reject(m2.delivery_tag, requeue=True)
    ch.tx_commit()
    after = ch.queue_declare(q, passive=True).method.message_count
    ch.queue_delete(q)
    return (still_unacked, after)


attempt("tx ack rollback", tx_ack_rollback)
attempt("tx.commit without select", lambda ch: ch.tx_commit())
attempt("tx.rollback without select", lambda ch: ch.tx_rollback())
attempt("confirm on a tx channel", lambda ch: (ch.tx_select(), ch.confirm_delivery()))
attempt("tx on a confirm channel", lambda ch: (ch.confirm_delivery(), ch.tx_select()))


def confirms_and_returns(ch, with_code=False):
    """Puts `ch` in confirm mode and returns the list its basic.ack / basic.nack / basic.return go to, in the
    order they arrive (returns with their reply code when `with_code`)."""
    events = []
    ch._impl.add_on_return_callback(
        lambda c, m, p, b: events.append(("return", m.reply_code) if with_code else "return")
    )
    ch._impl.confirm_delivery(lambda frame: events.append(type(frame.method).__name__))
    return events


def confirm_and_return_order(ch):
    """A mandatory publish nobody takes: basic.return comes before its basic.ack."""
    events = confirms_and_returns(ch)
    ch._impl.basic_publish("amq.direct", "nobody", b"x", mandatory=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch._impl.basic_publish("", q, b"y", mandatory=True)
    pump(0.3)
    return events


attempt("return before ack", confirm_and_return_order)


def nack_without_requeue_no_dlx(ch):
    q = filled(ch, "nackdrop", 2)
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    return (drain(ch, q), ch.queue_declare(q, passive=True).method.message_count)


attempt("nack without requeue, no DLX", nack_without_requeue_no_dlx)


def reject_publish_dlx(ch):
    dead = filled(ch, "rpdead", 0)
    q = name("rpdlx")
    ch.queue_declare(
        q,
        arguments={
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    ch.confirm_delivery()
    res = []
    for body in (b"kept", b"refused"):
        try:
            ch.basic_publish("", q, body)
            res.append("ack")
        except pika.exceptions.NackError:
            res.append("nack")
    m, p, b = wait_get(ch, dead)
    res.append((b, headers_of(p) if p else None))
    res.append(drain(ch, q))
    return res


attempt("reject-publish-dlx", reject_publish_dlx)


def priority_with_max_length(ch):
    q = name("priolen")
    ch.queue_declare(q, arguments={"x-max-priority": 3, "x-max-length": 3})
    for i, prio in enumerate([1, 3, 0, 2, 3]):
        ch.basic_publish("", q, f"m{i}p{prio}".encode(), pika.BasicProperties(priority=prio))
    got = drain(ch, q)
    ch.queue_delete(q)
    return got


attempt("priority with max-length", priority_with_max_length)


def get_empty(ch):
    q = filled(ch, "empty", 0)
    m, p, b = ch.basic_get(q)
    return (m, p, b)


attempt("get-empty", get_empty)


def properties_round_trip(ch):
    q = filled(ch, "props", 0)
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"a": 1, "nested": {"b": [1, "two", True]}},
        delivery_mode=2,
        priority=7,
        correlation_id="cid",
        reply_to="rt",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="t",
        user_id="guest",
        app_id="app",
        cluster_id="cluster",
    )
    ch.basic_publish("", q, b"body", props)
    m, p, b = wait_get(ch, q)
    return {k: getattr(p, k) for k in sorted(vars(p)) if not k.startswith("_")}


attempt("properties round trip", properties_round_trip)


# --- round 3: names, expiry through requeue, overflow with mandatory ---------------------------------------
def empty_names(ch):
    res = []
    try:
        ch.queue_bind("", "amq.fanout")
        res.append("bind ok")
    except ChannelClosedByBroker as e:
        res.append((e.reply_code, e.reply_text))
    ch = channel()
    first = ch.queue_declare("", exclusive=True).method.queue
    second = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind("", "amq.fanout")  # the last declared: second
    ch.basic_publish("amq.fanout", "", b"fan")
    conn.sleep(0.1)
    res.append((first != second, drain(ch, first), drain(ch, second)))
    ch.basic_publish("", second, b"x")
    conn.sleep(0.05)
    res.append(("purge ''", ch.queue_purge("").method.message_count))
    m, _, _ = ch.basic_get("")
    res.append(("get ''", m))
    res.append(("delete ''", ch.queue_delete("").method.message_count))
    try:
        ch.queue_declare(second, passive=True)
        res.append("second still there")
    except ChannelClosedByBroker as e:
        res.append((e.reply_code, e.reply_text.replace(second, "SECOND")))
    return res


attempt("empty queue names", empty_names)


def expiry_kept_through_requeue(ch):
    """A message requeued keeps the expiry it got when it entered the queue."""
    q = name("expreq")
    ch.queue_declare(q, arguments={"x-message-ttl": 300})
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q)
    conn.sleep(0.4)
    ch.basic_nack(m.delivery_tag, requeue=True)
    conn.sleep(0.1)
    n = ch.queue_declare(q, passive=True).method.message_count
    ch.queue_delete(q)
    return n


attempt("expiry kept through requeue", expiry_kept_through_requeue)


def reject_publish_mandatory(ch):
    """reject-publish with mandatory: a nack, and no basic.return (the message was routed)."""
    q = name("rpm")
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    events = confirms_and_returns(ch, with_code=True)
    for body in (b"a", b"b"):
        ch._impl.basic_publish("", q, body, mandatory=True)
    pump(0.3)
    ch.queue_delete(q)
    return events


attempt("reject-publish with mandatory", reject_publish_mandatory)


def exclusive_redeclare_by_owner(ch):
    q = name("exclown")
    ch.queue_declare(q, exclusive=True)
    res = [ch.queue_declare(q, passive=True).method.queue == q]
    try:
        ch.queue_declare(q, exclusive=False)
        res.append("redeclared")
    except ChannelClosedByBroker as e:
        res.append((e.reply_code, e.reply_text))
    return res


attempt("exclusive queue redeclared by its owner", exclusive_redeclare_by_owner)


def auto_delete_on_channel_close(ch):
    q = name("adclose")
    ch.queue_declare(q, auto_delete=True)
    c = channel()
    c.basic_consume(q, lambda *a: None)
    c.close()
    conn.sleep(0.1)
    return queue_gone(ch, q)


attempt("auto-delete queue when its consumer's channel closes", auto_delete_on_channel_close)


def prefetch_zero_is_unlimited(ch):
    q = filled(ch, "pf0", 300)
    ch.basic_qos(prefetch_count=0)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    pump(0.5)
    return (len(got), drain_flagged(ch, q))


attempt("prefetch 0 is unlimited", prefetch_zero_is_unlimited)




def alternate_exchange_chain(ch):
    a, b = name("aea"), name("aeb")
    ch.exchange_declare(b, "fanout", arguments={"alternate-exchange": a})
    ch.exchange_declare(a, "direct", arguments={"alternate-exchange": b})  # a loop, nothing bound
    q = name("aeq")
    ch.queue_declare(q)
    returned = []
    ch.add_on_return_callback(lambda c, m, p, body: returned.append(m.reply_text))
    ch.basic_publish(a, "k", b"loop", mandatory=True)
    pump(0.2)
    ch.queue_bind(q, b)
    ch.basic_publish(a, "k", b"via b")
    conn.sleep(0.1)
    res = (returned, drain(ch, q))
    for x in (a, b):
        ch.exchange_delete(x)
    ch.queue_delete(q)
    return res


attempt("alternate exchange loop", alternate_exchange_chain)

conn.close()
