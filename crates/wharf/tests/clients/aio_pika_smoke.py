"""aio-pika (asyncio, over aiormq and the pamqp codec) against Wharf: a robust connection, channels with
publisher confirms (aio-pika's default), typed headers and properties round-tripped through pamqp's field
tables, the queue iterator with message.process() acks and a requeue, prefetch across two consumers,
mandatory returns, a 404 that closes only its channel, transactions, per-message TTL, and aio-pika's own
RPC and Master/Worker patterns (a headers-exchange dead-letter route for expired calls, server-named
exclusive reply queues). Usage: aio_pika_smoke.py HOST:PORT. Exits non-zero on the first failure."""

import asyncio
import datetime
import decimal
import sys
import uuid

import aio_pika
from aio_pika.exceptions import ChannelNotFoundEntity, DeliveryError
from aio_pika.patterns import RPC, Master, NackMessage

host, port = sys.argv[1].rsplit(":", 1)
URL = f"amqp://guest:guest@{host}:{port}/"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


async def get_one(queue, timeout=5.0):
    """basic.get until a message is there (deliveries behind a publish confirm may take a moment)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await queue.get(no_ack=False, fail=False)
        if msg is not None:
            return msg
        check(asyncio.get_running_loop().time() < deadline, f"nothing arrived in {queue.name}")
        await asyncio.sleep(0.02)


async def properties_and_headers(channel):
    exchange = await channel.declare_exchange("aiopika.props", aio_pika.ExchangeType.DIRECT, auto_delete=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "k")
    stamp = datetime.datetime(2026, 12, 3, 10, 30, 15, tzinfo=datetime.timezone.utc)
    headers = {
        "str": "text",
        "int": 42,
        "negative": -7,
        "big": 2**40,
        "float": 1.5,
        "bool": True,
        "bytes": bytearray(b"\x00\x01raw"),
        "decimal": decimal.Decimal("3.14"),
        "list": [1, "two", 3.0],
        "nested": {"inner": {"deep": "yes"}},
        "none": None,
        "when": stamp,
    }
    message = aio_pika.Message(
        b"payload",
        headers=headers,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=3,
        correlation_id="corr-1",
        reply_to="somewhere",
        message_id="msg-1",
        timestamp=stamp,
        type="kind",
        user_id="guest",
        app_id="aiopika-smoke",
    )
    confirm = await exchange.publish(message, "k")
    check(type(confirm).__name__ == "Ack", f"publish confirm {confirm!r}")
    got = await get_one(queue)
    check(got.body == b"payload", f"body {got.body!r}")
    h = got.headers
    for key in ("str", "int", "negative", "big", "bool", "list", "nested", "none", "decimal"):
        check(h.get(key) == headers[key], f"header {key}: {h.get(key)!r} != {headers[key]!r}")
    check(abs(h["float"] - 1.5) < 1e-9, f"header float {h['float']!r}")
    check(bytes(h["bytes"]) == b"\x00\x01raw", f"header bytes {h['bytes']!r}")
    check(h["when"].replace(tzinfo=datetime.timezone.utc) == stamp, f"header timestamp {h['when']!r}")
    check(got.content_type == "application/json" and got.content_encoding == "utf-8", "content type/encoding")
    check(got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT and got.priority == 3, "delivery mode/priority")
    check(got.correlation_id == "corr-1" and got.reply_to == "somewhere", "correlation id/reply to")
    check(got.message_id == "msg-1" and got.type == "kind", "message id/type")
    check(got.user_id == "guest" and got.app_id == "aiopika-smoke", "user id/app id")
    check(got.timestamp.replace(tzinfo=datetime.timezone.utc) == stamp, f"timestamp {got.timestamp!r}")
    check(got.routing_key == "k" and got.exchange == "aiopika.props", "routing key/exchange")
    await got.ack()


async def iterator_acks_and_requeue(channel):
    queue = await channel.declare_queue("aiopika.work", durable=True)
    await queue.purge()
    for i in range(6):
        await channel.default_exchange.publish(
            aio_pika.Message(f"job{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "aiopika.work"
        )
    seen = []
    requeued = False
    async with queue.iterator() as it:
        async for message in it:
            if message.body == b"job2" and not requeued:
                requeued = True
                # process(requeue=True) nacks with requeue when the block raises.
                try:
                    async with message.process(requeue=True):
                        raise RuntimeError("try again")
                except RuntimeError:
                    pass
                continue
            async with message.process():
                seen.append((message.body.decode(), message.redelivered))
            if len(seen) == 6:
                break
    bodies = sorted(b for b, _ in seen)
    check(bodies == [f"job{i}" for i in range(6)], f"iterator saw {seen}")
    check(("job2", True) in seen, f"requeued job2 not redelivered: {seen}")
    check((await queue.declare()).message_count == 0, "work queue not empty after acks")
    await queue.delete()


async def fair_dispatch(connection):
    """Prefetch 1 on two channels: a slow consumer gets few messages, the fast one the rest."""
    producer = await connection.channel()
    await producer.declare_queue("aiopika.fair", auto_delete=False)
    slow_ch, fast_ch = await connection.channel(), await connection.channel()
    await slow_ch.set_qos(prefetch_count=1)
    await fast_ch.set_qos(prefetch_count=1)
    counts = {"slow": 0, "fast": 0}
    done = asyncio.Event()
    total = 40

    def consumer(name, delay):
        async def on_message(message):
            await asyncio.sleep(delay)
            counts[name] += 1
            await message.ack()
            if counts["slow"] + counts["fast"] == total:
                done.set()

        return on_message

    slow_q = await slow_ch.get_queue("aiopika.fair")
    fast_q = await fast_ch.get_queue("aiopika.fair")
    await slow_q.consume(consumer("slow", 0.2))
    await fast_q.consume(consumer("fast", 0.0))
    for i in range(total):
        await producer.default_exchange.publish(aio_pika.Message(str(i).encode()), "aiopika.fair")
    await asyncio.wait_for(done.wait(), 20)
    check(counts["slow"] <= 6 and counts["fast"] >= 34, f"prefetch 1 did not spread work fairly: {counts}")
    await producer.queue_delete("aiopika.fair")
    for ch in (producer, slow_ch, fast_ch):
        await ch.close()


async def returns_and_errors(connection):
    channel = await connection.channel(on_return_raises=True)
    exchange = await channel.declare_exchange("aiopika.nowhere", aio_pika.ExchangeType.TOPIC, auto_delete=True)
    # The exchange needs one binding to stay around with auto-delete; the message still matches nothing.
    keep = await channel.declare_queue("", exclusive=True)
    await keep.bind(exchange, "only.this")
    try:
        await exchange.publish(aio_pika.Message(b"lost"), "no.match", mandatory=True)
        check(False, "unroutable mandatory publish was not returned")
    except DeliveryError as e:
        check(e.message is not None and e.message.body == b"lost", f"returned message {e.message!r}")

    # A passive declare of a missing queue closes that channel with 404; others keep working.
    broken = await connection.channel()
    try:
        await broken.declare_queue("aiopika.missing", passive=True)
        check(False, "passive declare of a missing queue succeeded")
    except ChannelNotFoundEntity:
        pass
    check(broken.is_closed, "channel still open after 404")
    q = await channel.declare_queue("", exclusive=True)
    await channel.default_exchange.publish(aio_pika.Message(b"still here"), q.name)
    got = await get_one(q)
    check(got.body == b"still here", "channel beside the 404 stopped working")
    await got.ack()
    await channel.close()


async def transactions(connection):
    channel = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue("", exclusive=True)
    async with channel.transaction():
        await channel.default_exchange.publish(aio_pika.Message(b"committed"), queue.name)
    tx = channel.transaction()
    await tx.select()
    await channel.default_exchange.publish(aio_pika.Message(b"rolled back"), queue.name)
    await tx.rollback()
    got = await get_one(queue)
    check(got.body == b"committed", f"transaction gave {got.body!r}")
    await got.ack()
    await asyncio.sleep(0.1)
    check(await queue.get(fail=False) is None, "rolled back publish was delivered")
    await channel.close()


async def per_message_ttl(channel):
    dead = await channel.declare_queue("", exclusive=True)
    ttl_q = await channel.declare_queue(
        "", exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name}
    )
    await channel.default_exchange.publish(aio_pika.Message(b"short-lived", expiration=0.05), ttl_q.name)
    got = await get_one(dead)
    check(got.body == b"short-lived", "expired message not dead-lettered")
    death = got.headers["x-death"][0]
    check(death["reason"] == "expired" and death["queue"] == ttl_q.name, f"x-death {death}")
    check(got.expiration is None, f"expiration kept on the dead letter: {got.expiration!r}")
    await got.ack()


async def rpc_pattern(connection):
    server_ch = await connection.channel()
    client_ch = await connection.channel()
    server = await RPC.create(server_ch)
    client = await RPC.create(client_ch)

    async def multiply(*, x, y):
        return x * y

    await server.register("aiopika.multiply", multiply, auto_delete=False)
    results = await asyncio.gather(*(client.proxy.aiopika.multiply(x=i, y=3) for i in range(20)))
    check(results == [i * 3 for i in range(20)], f"rpc results {results}")
    # A call nobody serves before it expires is dead-lettered by the queue (x-dead-letter-exchange) into
    # the pattern's headers exchange, which routes it by its `From` header back to the caller's queue.
    await server.unregister(multiply)
    try:
        await client.call("aiopika.multiply", kwargs=dict(x=1, y=1), expiration=0.2)
        check(False, "an unserved call returned")
    except asyncio.TimeoutError as e:
        check("timed-out" in str(e.args[0]), f"unserved call failed with {e!r}")
    await server_ch.queue_delete("aiopika.multiply")
    await client.close()
    await server.close()


async def master_worker(connection):
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    master = Master(channel)
    done = []
    event = asyncio.Event()
    attempts = {}

    async def worker(*, n):
        attempts[n] = attempts.get(n, 0) + 1
        if n == 3 and attempts[n] == 1:
            raise NackMessage(requeue=True)
        done.append(n)
        if len(done) == 10:
            event.set()

    await master.create_worker("aiopika.tasks", worker, auto_delete=True)
    for n in range(10):
        await master.proxy.aiopika.tasks(n=n)
    await asyncio.wait_for(event.wait(), 10)
    check(sorted(done) == list(range(10)) and attempts[3] == 2, f"worker did {done}, attempts {attempts}")
    await channel.close()


async def main():
    connection = await aio_pika.connect_robust(URL, client_properties={"connection_name": "aio-pika smoke"})
    async with connection:
        channel = await connection.channel()
        await properties_and_headers(channel)
        await iterator_acks_and_requeue(channel)
        await fair_dispatch(connection)
        await returns_and_errors(connection)
        await transactions(connection)
        await per_message_ttl(channel)
        await rpc_pattern(connection)
        await master_worker(connection)
        # A second connection with its own name while the first is open.
        other = await aio_pika.connect(URL)
        ch = await other.channel()
        q = await ch.declare_queue(f"aiopika.{uuid.uuid4()}", exclusive=True)
        check(q.name.startswith("aiopika."), "second connection")
        await other.close()
    print("aio-pika smoke test passed")


asyncio.run(main())
