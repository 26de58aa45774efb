"""pika (the Python AMQP client RabbitMQ's tutorials use) against Wharf: publisher confirms (which pika
enables only when the broker advertises them), mandatory returns, durable topology, consume with manual
acks and a requeue, dead-lettering on reject with x-death, a 406 on an inequivalent redeclare, and an RPC
through direct reply-to. Usage: pika_smoke.py HOST:PORT. Exits non-zero on the first failure."""

import sys
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker, UnroutableError

host, port = sys.argv[1].rsplit(":", 1)
params = pika.ConnectionParameters(host=host, port=int(port), credentials=pika.PlainCredentials("guest", "guest"))


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.confirm_delivery()

# Durable topology and confirmed persistent publishes.
ch.exchange_declare("pika.orders", exchange_type="topic", durable=True)
ch.queue_declare("pika.work", durable=True)
ch.queue_bind("pika.work", "pika.orders", routing_key="order.*")
persistent = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
for i in range(5):
    ch.basic_publish("pika.orders", "order.new", f"m{i}".encode(), persistent, mandatory=True)

# An unroutable mandatory message comes back (pika raises it under confirms).
try:
    ch.basic_publish("pika.orders", "nothing.here", b"lost", persistent, mandatory=True)
    check(False, "unroutable mandatory publish was not returned")
except UnroutableError:
    pass

# basic.get, then a consumer with manual acks; a nack with requeue comes back redelivered.
method, props, body = ch.basic_get("pika.work")
check(body == b"m0" and props.content_type == "text/plain", f"basic.get got {body!r}")
ch.basic_ack(method.delivery_tag)
seen = []
# Prefetch 1: the requeued message goes back to the head and comes next, before m2.
ch.basic_qos(prefetch_count=1)
for method, props, body in ch.consume("pika.work", inactivity_timeout=2):
    if method is None:
        break
    if body == b"m1" and not method.redelivered:
        ch.basic_nack(method.delivery_tag, requeue=True)
        continue
    seen.append((body, method.redelivered))
    ch.basic_ack(method.delivery_tag)
    if len(seen) == 4:
        break
ch.cancel()
check(seen == [(b"m1", True), (b"m2", False), (b"m3", False), (b"m4", False)], f"consumed {seen}")

# Dead-lettering on reject, with x-death.
ch.exchange_declare("pika.dlx", exchange_type="fanout")
ch.queue_declare("pika.dead")
ch.queue_bind("pika.dead", "pika.dlx")
ch.queue_declare("pika.rejecting", arguments={"x-dead-letter-exchange": "pika.dlx"})
ch.basic_publish("", "pika.rejecting", b"bad")
method, _, _ = ch.basic_get("pika.rejecting")
ch.basic_reject(method.delivery_tag, requeue=False)
for _ in range(100):
    method, props, body = ch.basic_get("pika.dead", auto_ack=True)
    if method is not None:
        break
    conn.sleep(0.02)
check(body == b"bad", "dead letter did not arrive")
death = props.headers["x-death"][0]
check(death["reason"] == "rejected" and death["queue"] == "pika.rejecting", f"x-death {death}")

# An inequivalent redeclare closes the channel with 406; the connection lives on.
try:
    ch.queue_declare("pika.rejecting", arguments={"x-message-ttl": 5})
    check(False, "inequivalent redeclare accepted")
except ChannelClosedByBroker as e:
    check(e.reply_code == 406, f"expected 406, got {e.reply_code}")
ch = conn.channel()

# RPC through direct reply-to: the server replies to the rewritten reply_to with the correlation id.
server = conn.channel()
server.queue_declare("pika.rpc")


def on_request(channel, method, props, body):
    channel.basic_publish("", props.reply_to, body.upper(), pika.BasicProperties(correlation_id=props.correlation_id))
    channel.basic_ack(method.delivery_tag)


server.basic_consume("pika.rpc", on_request)
replies = []
ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True)
cid = str(uuid.uuid4())
ch.basic_publish("", "pika.rpc", b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=cid))
for _ in range(200):
    conn.process_data_events(time_limit=0.05)
    if replies:
        break
check(replies == [(cid, b"PING")], f"rpc replies {replies}")

ch.queue_delete("pika.work")
ch.exchange_delete("pika.orders")
conn.close()
print("pika smoke test passed")
