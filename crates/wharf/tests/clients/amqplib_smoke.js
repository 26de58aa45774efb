// amqplib (Node's most used AMQP client) against a broker; must pass with amqplib 2.3.1 and with 0.10.5, whose
// default connect asks for frame_max 4096. Checks server capabilities, durable/exclusive/server-named queues,
// direct/topic/fanout routing, a headers binding matched across numeric types, property and nested-header round
// trip, a ConfirmChannel, mandatory returns, manual acks with a requeue, prefetch, basic.get, dead-lettering by
// TTL, user_id validation, amq.* exchange rules, unbind of a missing exchange, a passive 404, server-initiated
// consumer cancel, 1 MiB and empty bodies, transactions, direct reply-to and (last, it closes the connection)
// basic.qos prefetch_size -> 540.
//
// Usage: NODE_PATH=<dir with amqplib> node amqplib_smoke.js 127.0.0.1:PORT
// Prints one line per check; exits non-zero on the first mismatch.
'use strict';

const amqp = require('amqplib');
const assert = require('assert');
const crypto = require('crypto');

const addr = process.argv[2];
const S = crypto.randomBytes(5).toString('hex');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Method ids for what amqplib has no API for (tx.*, basic.qos with a prefetch_size); both versions accept them in rpc().
const TX_SELECT = 0x5a000a, TX_SELECT_OK = 0x5a000b, TX_COMMIT = 0x5a0014, TX_COMMIT_OK = 0x5a0015;
const TX_ROLLBACK = 0x5a001e, TX_ROLLBACK_OK = 0x5a001f, BASIC_QOS = 0x3c000a, BASIC_QOS_OK = 0x3c000b;

setTimeout(() => {
  console.log('FAILED: timed out after 30 s');
  process.exit(2);
}, 30000).unref();

function ok(what) {
  console.log('ok: ' + what);
}
function check(cond, what) {
  if (!cond) {
    console.log('FAILED: ' + what);
    process.exit(1);
  }
  ok(what);
}
function show(v) {
  return JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? `${x}n` : x));
}

async function channel(c, confirm) {
  const ch = confirm ? await c.createConfirmChannel() : await c.createChannel();
  ch.on('error', () => {}); // channel closes by the broker are checked through the rejected operation
  return ch;
}

async function poll(ch, q, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const m = await ch.get(q, { noAck: true });
    if (m || Date.now() > end) return m;
    await sleep(20);
  }
}

async function drain(ch, q) {
  await sleep(150);
  const got = [];
  for (let m; (m = await ch.get(q, { noAck: true })); ) got.push(m.content.toString());
  return got.sort();
}

// Runs op on a fresh channel and requires the broker to close that channel with code; the connection stays usable.
async function expectChannelClose(c, code, what, op) {
  const ch = await channel(c);
  let err = null;
  try {
    await op(ch);
  } catch (e) {
    err = e;
  }
  check(err && err.code === code, `${what} -> channel.close ${code} (got ${err && err.message})`);
  const probe = await channel(c);
  await probe.checkExchange('amq.direct');
  ok(`${what}: connection still usable on a new channel`);
  await probe.close();
}

// Runs op on a fresh channel and requires it to succeed.
async function expectOk(c, what, op) {
  const ch = await channel(c);
  let err = null;
  try {
    await op(ch);
  } catch (e) {
    err = e;
  }
  check(err === null, err ? `${what} (got ${err.message})` : what);
  await ch.close().catch(() => {});
}

async function main() {
  // ---- connect with default options (amqplib 0.10.5 asks for frame_max 4096)
  let c;
  try {
    c = await amqp.connect(`amqp://guest:guest@${addr}/`);
  } catch (e) {
    check(false, `connect with default options -> ${e.message}`);
  }
  let connClose = null;
  c.on('error', () => {});
  c.on('close', (e) => { connClose = e || 'clean'; });
  ok(`connected, frame_max ${c.connection.frameMax}`);
  const caps = c.connection.serverProperties.capabilities || {};
  for (const cap of ['publisher_confirms', 'basic.nack', 'consumer_cancel_notify', 'exchange_exchange_bindings',
    'connection.blocked', 'authentication_failure_close', 'per_consumer_qos', 'direct_reply_to']) {
    check(caps[cap] === true, `capability ${cap} = true`);
  }
  const ch = await channel(c);

  // ---- queue declarations
  const durable = `nj.durable.${S}`;
  let r = await ch.assertQueue(durable, { durable: true });
  check(r.queue === durable && r.messageCount === 0, 'durable queue declared');
  ch.sendToQueue(durable, Buffer.from('d1'), { persistent: true });
  ch.sendToQueue(durable, Buffer.from('d2'), { persistent: true });
  await sleep(100);
  check((await ch.checkQueue(durable)).messageCount === 2, 'passive declare counts 2 messages');
  check((await ch.assertQueue(durable, { durable: true })).messageCount === 2, 'equivalent redeclare ok, 2 messages');
  r = await ch.assertQueue(`nj.excl.${S}`, { exclusive: true });
  check(r.queue === `nj.excl.${S}`, 'exclusive queue declared');
  r = await ch.assertQueue('', { exclusive: true });
  check(r.queue.startsWith('amq.gen-'), `server-named queue ${r.queue}`);

  // ---- direct / topic / fanout routing
  const xd = `nj.direct.${S}`, xt = `nj.topic.${S}`, xf = `nj.fanout.${S}`;
  await ch.assertExchange(xd, 'direct', { durable: false });
  await ch.assertExchange(xt, 'topic', { durable: false });
  await ch.assertExchange(xf, 'fanout', { durable: false });
  const q1 = (await ch.assertQueue('', { exclusive: true })).queue;
  const q2 = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(q1, xd, 'k1');
  await ch.bindQueue(q2, xd, 'k2');
  await ch.bindQueue(q1, xt, 'a.*.c');
  await ch.bindQueue(q2, xt, 'a.#');
  await ch.bindQueue(q1, xf, '');
  await ch.bindQueue(q2, xf, 'ignored');
  for (const [x, rk, body] of [[xd, 'k1', 'direct-k1'], [xd, 'k2', 'direct-k2'], [xd, 'k3', 'direct-k3'],
    [xt, 'a.b.c', 'topic-a.b.c'], [xt, 'a', 'topic-a'], [xt, 'b.a', 'topic-b.a'], [xf, 'whatever', 'fanout']]) {
    ch.publish(x, rk, Buffer.from(body));
  }
  const got1 = await drain(ch, q1), got2 = await drain(ch, q2);
  check(show(got1) === show(['direct-k1', 'fanout', 'topic-a.b.c']), `routing to q1: ${show(got1)}`);
  check(show(got2) === show(['direct-k2', 'fanout', 'topic-a', 'topic-a.b.c']), `routing to q2: ${show(got2)}`);

  // ---- headers exchange: a binding's 5 (amqplib sends a byte) matches int/long/double 5, not true or 6
  const xh = `nj.headers.${S}`;
  await ch.assertExchange(xh, 'headers', { durable: false });
  const qh = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(qh, xh, '', { 'x-match': 'all', n: 5, kind: 'num' });
  const hpubs = {
    byte: 5, int: { '!': 'int', value: 5 }, long: { '!': 'long', value: 5 }, double: { '!': 'double', value: 5 },
    bool: true, long6: { '!': 'long', value: 6 },
  };
  for (const [k, n] of Object.entries(hpubs)) ch.publish(xh, '', Buffer.from(k), { headers: { n, kind: 'num' } });
  ch.publish(xh, '', Buffer.from('missing-kind'), { headers: { n: 5 } });
  const goth = await drain(ch, qh);
  check(show(goth) === show(['byte', 'double', 'int', 'long']), `headers x-match=all n=5 routes byte/int/long/double 5, not true/6: ${show(goth)}`);

  // ---- properties and nested headers round trip
  const qp = (await ch.assertQueue('', { exclusive: true })).queue;
  const headers = {
    str: 'hello', small: 42, int: 70000, long: { '!': 'long', value: 1234567890123 }, neg: -7, bool: true, double: 2.5,
    nested: { inner: 'v', deeper: { deep: 1, list: ['x', 2] } }, array: ['a', 1, true, { t: 'u' }],
  };
  const expectHeaders = { ...headers, long: 1234567890123 };
  ch.sendToQueue(qp, Buffer.from('props'), {
    contentType: 'application/json', contentEncoding: 'gzip', headers, deliveryMode: 2, priority: 3,
    correlationId: 'corr-1', replyTo: 'reply.q', expiration: '60000', messageId: 'mid-1', timestamp: 1700000000,
    type: 'my.type', userId: 'guest', appId: 'node-smoke',
  });
  const pm = await poll(ch, qp, 2000);
  check(pm && pm.content.toString() === 'props', 'message with properties delivered');
  const p = pm.properties;
  const { headers: gotHeaders, ...rest } = p;
  const expectProps = {
    contentType: 'application/json', contentEncoding: 'gzip', deliveryMode: 2, priority: 3, correlationId: 'corr-1',
    replyTo: 'reply.q', expiration: '60000', messageId: 'mid-1', timestamp: 1700000000, type: 'my.type', userId: 'guest',
    appId: 'node-smoke',
  };
  const restDefined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
  let same = true;
  try { assert.deepStrictEqual(restDefined, expectProps); } catch (e) { same = false; }
  check(same, `basic properties round trip: ${show(restDefined)}`);
  same = true;
  try { assert.deepStrictEqual(gotHeaders, expectHeaders); } catch (e) { same = false; }
  check(same, `nested header table round trip: ${show(gotHeaders)}`);

  // ---- publisher confirms (ConfirmChannel) and mandatory returns
  const cc = await channel(c, true);
  const returns = [];
  cc.on('return', (m) => returns.push(`${m.fields.replyCode} ${m.fields.replyText} ${m.fields.routingKey} ${m.content}`));
  const qc = (await cc.assertQueue('', { exclusive: true })).queue;
  let acks = 0, nacks = 0;
  for (let i = 0; i < 20; i++) {
    cc.sendToQueue(qc, Buffer.from(`c${i}`), { persistent: true, mandatory: true }, (err) => (err ? nacks++ : acks++));
  }
  await cc.waitForConfirms();
  check(acks === 20 && nacks === 0, `20 publishes confirmed (waitForConfirms): ${acks} acks ${nacks} nacks`);
  check((await cc.checkQueue(qc)).messageCount === 20, '20 messages queued');
  const nowhere = `nj.nowhere.${S}`;
  let unroutableAck = null;
  cc.publish('', nowhere, Buffer.from('unroutable'), { mandatory: true }, (err) => { unroutableAck = !err; });
  await cc.waitForConfirms();
  for (let i = 0; i < 100 && returns.length === 0; i++) await sleep(20);
  check(returns[0] === `312 NO_ROUTE ${nowhere} unroutable` && unroutableAck === true,
    `unroutable mandatory publish returned and confirmed: ${show(returns)} ack=${unroutableAck}`);

  // ---- consume with manual ack, prefetch 2, nack with requeue -> redelivered
  const qa = (await ch.assertQueue('', { exclusive: true, autoDelete: false })).queue;
  for (let i = 1; i <= 4; i++) ch.sendToQueue(qa, Buffer.from(`m${i}`));
  const cons = await channel(c);
  await cons.prefetch(2);
  const deliveries = [];
  const next = async (ms) => {
    for (let i = 0; i < ms / 10 && deliveries.length === 0; i++) await sleep(10);
    return deliveries.shift();
  };
  const { consumerTag } = await cons.consume(qa, (m) => deliveries.push(m), { noAck: false });
  const d1 = await next(2000), d2 = await next(2000);
  check(d1 && d2 && d1.content.toString() === 'm1' && d2.content.toString() === 'm2', 'prefetch 2: m1, m2 delivered');
  check((await next(300)) === undefined, 'prefetch 2: no third delivery while 2 are unacked');
  check(!d1.fields.redelivered && !d2.fields.redelivered, 'first deliveries had redelivered=false');
  cons.nack(d1, false, true);
  const d3 = await next(2000);
  check(d3 && d3.content.toString() === 'm1' && d3.fields.redelivered === true, 'nack requeue: m1 comes back redelivered=true');
  cons.ack(d3, true); // acks m2 and m1
  const restMsgs = [];
  for (let i = 0; i < 2; i++) {
    const d = await next(2000);
    if (!d) break;
    restMsgs.push(d.content.toString());
    cons.ack(d);
  }
  check(show(restMsgs) === show(['m3', 'm4']), `after ack: m3, m4 delivered ${show(restMsgs)}`);
  await cons.cancel(consumerTag);
  await sleep(100);
  r = await ch.checkQueue(qa);
  check(r.messageCount === 0 && r.consumerCount === 0, 'all acked, consumer cancelled');

  // ---- basic.get
  ch.sendToQueue(qa, Buffer.from('g1'));
  ch.sendToQueue(qa, Buffer.from('g2'));
  await sleep(100);
  let g = await ch.get(qa, { noAck: false });
  check(g && g.content.toString() === 'g1' && g.fields.messageCount === 1 && !g.fields.redelivered, 'basic.get g1 with message_count 1');
  ch.ack(g);
  g = await ch.get(qa, { noAck: true });
  check(g && g.content.toString() === 'g2' && g.fields.messageCount === 0, 'basic.get g2 (no-ack)');
  check((await ch.get(qa, { noAck: true })) === false, 'basic.get on empty queue -> get-empty (false)');

  // ---- dead-lettering on TTL expiry
  const dlx = `nj.dlx.${S}`;
  await ch.assertExchange(dlx, 'fanout', { durable: false });
  const dlq = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(dlq, dlx, '');
  const src = `nj.ttl.${S}`;
  await ch.assertQueue(src, { exclusive: true, messageTtl: 50, deadLetterExchange: dlx });
  ch.sendToQueue(src, Buffer.from('expired'));
  const dead = await poll(ch, dlq, 3000);
  check(dead && dead.content.toString() === 'expired', 'TTL-expired message dead-lettered');
  check(dead.fields.exchange === dlx && dead.fields.routingKey === src,
    `dead letter delivered from exchange '${dead.fields.exchange}' with routing key '${dead.fields.routingKey}'`);
  const death = ((dead.properties.headers || {})['x-death'] || [])[0];
  check(death && death.reason === 'expired' && death.queue === src && death.exchange === '', `x-death present: ${show(death)}`);

  // ---- channel-level errors: each closes only its channel
  await expectChannelClose(c, 406, "publish with user_id 'mallory' (login 'guest')", async (x) => {
    x.sendToQueue(qp, Buffer.from('bad'), { userId: 'mallory' });
    await x.checkQueue(qp);
  });
  check((await ch.checkQueue(qp)).messageCount === 0, 'message with forged user_id was not enqueued');
  await expectOk(c, 're-declare amq.topic as durable topic -> declare-ok', (x) => x.assertExchange('amq.topic', 'topic', { durable: true }));
  await expectChannelClose(c, 403, `declare exchange amq.foo.${S}`, (x) => x.assertExchange(`amq.foo.${S}`, 'direct'));
  await expectOk(c, 'queue.unbind naming a missing exchange -> unbind-ok', (x) => x.unbindQueue(qa, `nj.missing-exchange.${S}`, 'rk'));
  await expectChannelClose(c, 404, 'passive declare of missing queue', (x) => x.checkQueue(`nj.missing.${S}`));

  // ---- server-initiated consumer cancel: the callback gets null
  const qx = (await ch.assertQueue(`nj.cancel.${S}`, { exclusive: true })).queue;
  const cch = await channel(c);
  const cancelEvents = [];
  await cch.consume(qx, (m) => cancelEvents.push(m), { noAck: true });
  await ch.deleteQueue(qx);
  for (let i = 0; i < 100 && cancelEvents.length === 0; i++) await sleep(20);
  check(cancelEvents.length === 1 && cancelEvents[0] === null, 'queue deleted -> consumer callback called with null');
  await cch.checkExchange('amq.direct');
  ok("consumer's channel still open after basic.cancel from the server");

  // ---- 1 MiB and empty bodies (with amqplib 0.10.5 that is 257 frames of 4096)
  const big = crypto.randomBytes(1 << 20);
  const qb = (await ch.assertQueue('', { exclusive: true })).queue;
  cc.sendToQueue(qb, big);
  cc.sendToQueue(qb, Buffer.alloc(0));
  await cc.waitForConfirms();
  const bg = await poll(ch, qb, 3000), eg = await poll(ch, qb, 2000);
  check(bg && bg.content.equals(big), `1 MiB body round trip (frame_max ${c.connection.frameMax})`);
  check(eg && eg.content.length === 0, 'empty body round trip');

  // ---- transactions (no amqplib API: raw tx.select/commit/rollback)
  const tx = await channel(c);
  await tx.rpc(TX_SELECT, {}, TX_SELECT_OK);
  const qt = (await tx.assertQueue('', { exclusive: true })).queue;
  tx.sendToQueue(qt, Buffer.from('t1'));
  check((await tx.checkQueue(qt)).messageCount === 0, 'tx: uncommitted publish not visible');
  await tx.rpc(TX_COMMIT, {}, TX_COMMIT_OK);
  check((await tx.checkQueue(qt)).messageCount === 1, 'tx: commit -> 1 message');
  tx.sendToQueue(qt, Buffer.from('t2'));
  await tx.rpc(TX_ROLLBACK, {}, TX_ROLLBACK_OK);
  check((await tx.checkQueue(qt)).messageCount === 1, 'tx: rolled-back publish discarded');

  // ---- direct reply-to RPC
  const rpcq = (await ch.assertQueue('', { exclusive: true })).queue;
  const server = await channel(c);
  const seenReplyTo = [];
  await server.consume(rpcq, (m) => {
    seenReplyTo.push(m.properties.replyTo);
    server.sendToQueue(m.properties.replyTo, Buffer.from(`pong:${m.content}`), { correlationId: m.properties.correlationId });
    server.ack(m);
  });
  const client = await channel(c);
  const replies = [];
  await client.consume('amq.rabbitmq.reply-to', (m) => replies.push(`${m.properties.correlationId} ${m.content}`), { noAck: true });
  client.sendToQueue(rpcq, Buffer.from('ping'), { replyTo: 'amq.rabbitmq.reply-to', correlationId: `c-${S}` });
  for (let i = 0; i < 150 && replies.length === 0; i++) await sleep(20);
  check(seenReplyTo.length === 1 && seenReplyTo[0].startsWith('amq.rabbitmq.reply-to.'), `request's reply_to rewritten: ${seenReplyTo[0]}`);
  check(replies[0] === `c-${S} pong:ping`, `direct reply-to reply arrived: ${replies[0]}`);

  // ---- cleanup
  await ch.deleteQueue(durable);
  for (const x of [xd, xt, xf, xh, dlx]) await ch.deleteExchange(x);
  ok('cleanup');

  // ---- last: basic.qos with prefetch_size != 0 closes the connection with 540 NOT_IMPLEMENTED
  const q = await channel(c);
  let qosErr = null;
  try {
    await q.rpc(BASIC_QOS, { prefetchSize: 1000, prefetchCount: 0, global: false }, BASIC_QOS_OK);
  } catch (e) {
    qosErr = e;
  }
  for (let i = 0; i < 100 && connClose === null; i++) await sleep(20);
  check(qosErr !== null && connClose && connClose.code === 540,
    `basic.qos prefetch_size=1000 -> connection closed 540 (got ${qosErr ? qosErr.message : 'qos-ok'}; close: ${connClose && connClose.message})`);

  console.log('amqplib smoke test passed');
  process.exit(0);
}

main().catch((e) => {
  console.log(`FAILED: unexpected ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
