// The RabbitMQ Java client (Debian's librabbitmq-client-java 5.0.0) against a broker: server capabilities,
// durable/exclusive/server-named queues, direct/topic/fanout routing, a headers binding matched across numeric
// types, property and nested-header round trip, publisher confirms, mandatory returns, manual acks with a requeue,
// prefetch, basic.get, dead-lettering by TTL, user_id validation, amq.* exchange rules, unbind of a missing
// exchange, a passive 404, server-initiated consumer cancel, 1 MiB and empty bodies, frame_max 4096,
// transactions, direct reply-to, and (last, it closes the connection) basic.qos prefetch_size 540.
//
// Run (single-file source launch, no javac step):
//   java -cp /usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar \
//        JavaSmoke.java 127.0.0.1:PORT
// Prints one line per check; exits non-zero on the first mismatch.

import com.rabbitmq.client.*;

import java.io.IOException;
import java.util.*;
import java.util.concurrent.*;

public class JavaSmoke {
    static String host;
    static int port;
    static final String S = Long.toHexString(new Random().nextLong() & 0xffffffffffL);

    static void ok(String what) {
        System.out.println("ok: " + what);
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            System.out.println("FAILED: " + what);
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }
        ok(what);
    }

    static ConnectionFactory factory() {
        ConnectionFactory f = new ConnectionFactory();
        f.setHost(host);
        f.setPort(port);
        f.setUsername("guest");
        f.setPassword("guest");
        // Fail fast instead of reconnecting or waiting 10 minutes for a missing reply.
        f.setAutomaticRecoveryEnabled(false);
        f.setChannelRpcTimeout(5000);
        return f;
    }

    /** The close method carried by an exception from the client (null if it was not a protocol close). */
    static Method closeReason(Throwable e) {
        while (e != null && !(e instanceof ShutdownSignalException)) e = e.getCause();
        return e == null ? null : ((ShutdownSignalException) e).getReason();
    }

    static int closeCode(Method m) {
        if (m instanceof AMQP.Channel.Close) return ((AMQP.Channel.Close) m).getReplyCode();
        if (m instanceof AMQP.Connection.Close) return ((AMQP.Connection.Close) m).getReplyCode();
        return -1;
    }

    interface Op {
        void run(Channel ch) throws Exception;
    }

    /** Runs op on a fresh channel and requires the broker to close that channel with code; the connection stays open. */
    static void expectChannelClose(Connection c, int code, String what, Op op) throws Exception {
        Channel ch = c.createChannel();
        Method m = null;
        try {
            op.run(ch);
        } catch (IOException | ShutdownSignalException e) {
            m = closeReason(e);
        }
        check(m instanceof AMQP.Channel.Close && closeCode(m) == code,
            what + " -> channel.close " + code + " (got " + m + ")");
        check(c.isOpen() && !ch.isOpen(), what + ": connection still open, channel closed");
    }

    /** Runs op on a fresh channel and requires it to succeed. */
    static void expectOk(Connection c, String what, Op op) throws Exception {
        Channel ch = c.createChannel();
        Method m = null;
        try {
            op.run(ch);
        } catch (IOException | ShutdownSignalException e) {
            m = closeReason(e);
        }
        check(m == null, what + (m == null ? "" : " (got " + m + ")"));
    }

    static GetResponse poll(Channel ch, String q, long ms) throws Exception {
        long end = System.currentTimeMillis() + ms;
        while (true) {
            GetResponse r = ch.basicGet(q, true);
            if (r != null || System.currentTimeMillis() > end) return r;
            Thread.sleep(20);
        }
    }

    static List<String> drain(Channel ch, String q) throws Exception {
        Thread.sleep(150);
        List<String> got = new ArrayList<>();
        for (GetResponse r; (r = ch.basicGet(q, true)) != null; ) got.add(new String(r.getBody(), "UTF-8"));
        Collections.sort(got);
        return got;
    }

    /** LongString -> String, recursively, so a decoded table compares equal to what was sent. */
    static Object norm(Object v) {
        if (v instanceof LongString) return v.toString();
        if (v instanceof Map) {
            Map<String, Object> m = new HashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) m.put(e.getKey().toString(), norm(e.getValue()));
            return m;
        }
        if (v instanceof List) {
            List<Object> l = new ArrayList<>();
            for (Object o : (List<?>) v) l.add(norm(o));
            return l;
        }
        return v;
    }

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new HashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    static byte[] b(String s) throws Exception {
        return s.getBytes("UTF-8");
    }

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable e) {
            System.out.println("FAILED: unexpected " + e + (closeReason(e) == null ? "" : " / " + closeReason(e)));
            e.printStackTrace(System.out);
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }
    }

    @SuppressWarnings("unchecked")
    static void run(String[] args) throws Exception {
        String[] hp = args[0].split(":");
        host = hp[0];
        port = Integer.parseInt(hp[1]);
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(30000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAILED: timed out after 30 s");
            Runtime.getRuntime().halt(2);
        });
        watchdog.setDaemon(true);
        watchdog.start();

        // ---- connect with default settings; capabilities
        Connection c = factory().newConnection();
        Map<String, Object> caps = (Map<String, Object>) c.getServerProperties().get("capabilities");
        check(caps != null, "server properties carry capabilities");
        for (String cap : new String[]{"publisher_confirms", "basic.nack", "consumer_cancel_notify", "exchange_exchange_bindings",
                "connection.blocked", "authentication_failure_close", "per_consumer_qos", "direct_reply_to"}) {
            check(Boolean.TRUE.equals(caps.get(cap)), "capability " + cap + " = true");
        }
        Channel ch = c.createChannel();

        // ---- queue declarations
        String durable = "js.durable." + S;
        AMQP.Queue.DeclareOk dok = ch.queueDeclare(durable, true, false, false, null);
        check(dok.getQueue().equals(durable) && dok.getMessageCount() == 0, "durable queue declared");
        ch.basicPublish("", durable, MessageProperties.PERSISTENT_TEXT_PLAIN, b("d1"));
        ch.basicPublish("", durable, MessageProperties.PERSISTENT_TEXT_PLAIN, b("d2"));
        Thread.sleep(100);
        check(ch.queueDeclarePassive(durable).getMessageCount() == 2, "passive declare counts 2 messages");
        check(ch.queueDeclare(durable, true, false, false, null).getMessageCount() == 2, "equivalent redeclare ok, 2 messages");
        String excl = ch.queueDeclare("js.excl." + S, false, true, false, null).getQueue();
        check(excl.equals("js.excl." + S), "exclusive queue declared");
        String gen = ch.queueDeclare().getQueue();
        check(gen.startsWith("amq.gen-"), "server-named queue " + gen);

        // ---- direct / topic / fanout routing
        String xd = "js.direct." + S, xt = "js.topic." + S, xf = "js.fanout." + S;
        ch.exchangeDeclare(xd, BuiltinExchangeType.DIRECT);
        ch.exchangeDeclare(xt, BuiltinExchangeType.TOPIC);
        ch.exchangeDeclare(xf, BuiltinExchangeType.FANOUT);
        String q1 = ch.queueDeclare("", false, true, true, null).getQueue();
        String q2 = ch.queueDeclare("", false, true, true, null).getQueue();
        ch.queueBind(q1, xd, "k1");
        ch.queueBind(q2, xd, "k2");
        ch.queueBind(q1, xt, "a.*.c");
        ch.queueBind(q2, xt, "a.#");
        ch.queueBind(q1, xf, "");
        ch.queueBind(q2, xf, "ignored");
        ch.basicPublish(xd, "k1", null, b("direct-k1"));
        ch.basicPublish(xd, "k2", null, b("direct-k2"));
        ch.basicPublish(xd, "k3", null, b("direct-k3"));
        ch.basicPublish(xt, "a.b.c", null, b("topic-a.b.c"));
        ch.basicPublish(xt, "a", null, b("topic-a"));
        ch.basicPublish(xt, "b.a", null, b("topic-b.a"));
        ch.basicPublish(xf, "whatever", null, b("fanout"));
        List<String> got1 = drain(ch, q1), got2 = drain(ch, q2);
        check(got1.equals(Arrays.asList("direct-k1", "fanout", "topic-a.b.c")), "routing to q1: " + got1);
        check(got2.equals(Arrays.asList("direct-k2", "fanout", "topic-a", "topic-a.b.c")), "routing to q2: " + got2);

        // ---- headers exchange: int binding matches long and double of the same value, not bool
        String xh = "js.headers." + S;
        ch.exchangeDeclare(xh, BuiltinExchangeType.HEADERS);
        String qh = ch.queueDeclare("", false, true, true, null).getQueue();
        ch.queueBind(qh, xh, "", map("x-match", "all", "n", 5, "kind", "num"));
        Object[][] hpubs = {{"int", 5}, {"long", 5L}, {"double", 5.0d}, {"bool", true}, {"int6", 6}, {"long6", 6L}};
        for (Object[] p : hpubs) {
            ch.basicPublish(xh, "", new AMQP.BasicProperties.Builder().headers(map("n", p[1], "kind", "num")).build(), b((String) p[0]));
        }
        ch.basicPublish(xh, "", new AMQP.BasicProperties.Builder().headers(map("n", 5)).build(), b("missing-kind"));
        List<String> goth = drain(ch, qh);
        check(goth.equals(Arrays.asList("double", "int", "long")), "headers x-match=all n=int 5 routes int/long/double 5, not bool/6: " + goth);

        // ---- properties and nested headers round trip
        String qp = ch.queueDeclare("", false, true, true, null).getQueue();
        Map<String, Object> headers = map(
            "str", "hello", "int", 42, "long", 1234567890123L, "neg", -7, "bool", true, "double", 2.5d,
            "nested", map("inner", "v", "deeper", map("deep", 1, "list", Arrays.asList("x", 2))),
            "array", Arrays.asList("a", 1, true, map("t", "u")));
        AMQP.BasicProperties sent = new AMQP.BasicProperties.Builder()
            .contentType("application/json").contentEncoding("gzip").headers(headers).deliveryMode(2).priority(3)
            .correlationId("corr-1").replyTo("reply.q").expiration("60000").messageId("mid-1")
            .timestamp(new Date(1700000000000L)).type("my.type").userId("guest").appId("java-smoke").build();
        ch.basicPublish("", qp, sent, b("props"));
        GetResponse pr = poll(ch, qp, 2000);
        check(pr != null && new String(pr.getBody(), "UTF-8").equals("props"), "message with properties delivered");
        AMQP.BasicProperties p = pr.getProps();
        check("application/json".equals(p.getContentType()) && "gzip".equals(p.getContentEncoding())
            && Integer.valueOf(2).equals(p.getDeliveryMode()) && Integer.valueOf(3).equals(p.getPriority())
            && "corr-1".equals(p.getCorrelationId()) && "reply.q".equals(p.getReplyTo()) && "60000".equals(p.getExpiration())
            && "mid-1".equals(p.getMessageId()) && p.getTimestamp() != null && p.getTimestamp().getTime() == 1700000000000L
            && "my.type".equals(p.getType()) && "guest".equals(p.getUserId()) && "java-smoke".equals(p.getAppId()),
            "basic properties round trip: " + p);
        check(headers.equals(norm(p.getHeaders())), "nested header table round trip (types kept): " + norm(p.getHeaders()));

        // ---- publisher confirms and mandatory returns
        Channel cc = c.createChannel();
        cc.confirmSelect();
        BlockingQueue<String> returns = new LinkedBlockingQueue<>();
        cc.addReturnListener((code, text, exchange, rk, props, body) -> returns.add(code + " " + text + " " + rk + " " + new String(body)));
        String qc = cc.queueDeclare("", false, true, true, null).getQueue();
        for (int i = 0; i < 20; i++) cc.basicPublish("", qc, true, MessageProperties.PERSISTENT_BASIC, b("c" + i));
        cc.waitForConfirmsOrDie(5000);
        check(cc.queueDeclarePassive(qc).getMessageCount() == 20, "20 confirmed publishes (waitForConfirmsOrDie), 20 queued");
        String nowhere = "js.nowhere." + S;
        cc.basicPublish("", nowhere, true, null, b("unroutable"));
        cc.waitForConfirmsOrDie(5000);
        String ret = returns.poll(2, TimeUnit.SECONDS);
        check(("312 NO_ROUTE " + nowhere + " unroutable").equals(ret), "unroutable mandatory publish returned and confirmed: " + ret);

        // ---- consume with manual ack, prefetch 2, nack with requeue -> redelivered
        String qa = ch.queueDeclare("", false, true, false, null).getQueue(); // not auto-delete: outlives its consumer
        for (int i = 1; i <= 4; i++) ch.basicPublish("", qa, null, b("m" + i));
        Channel cons = c.createChannel();
        cons.basicQos(2);
        BlockingQueue<Object[]> deliveries = new LinkedBlockingQueue<>();
        String ctag = cons.basicConsume(qa, false, (tag, d) -> deliveries.add(new Object[]{
            new String(d.getBody(), "UTF-8"), d.getEnvelope().getDeliveryTag(), d.getEnvelope().isRedeliver()}), tag -> { });
        Object[] d1 = deliveries.poll(2, TimeUnit.SECONDS), d2 = deliveries.poll(2, TimeUnit.SECONDS);
        check(d1 != null && d2 != null && "m1".equals(d1[0]) && "m2".equals(d2[0]), "prefetch 2: m1, m2 delivered");
        check(deliveries.poll(300, TimeUnit.MILLISECONDS) == null, "prefetch 2: no third delivery while 2 are unacked");
        cons.basicNack((Long) d1[1], false, true);
        Object[] d3 = deliveries.poll(2, TimeUnit.SECONDS);
        check(d3 != null && "m1".equals(d3[0]) && Boolean.TRUE.equals(d3[2]), "nack requeue: m1 comes back redelivered=true");
        check(Boolean.FALSE.equals(d1[2]) && Boolean.FALSE.equals(d2[2]), "first deliveries had redelivered=false");
        cons.basicAck((Long) d3[1], true); // acks m2 and m1
        List<String> rest = new ArrayList<>();
        for (int i = 0; i < 2; i++) {
            Object[] d = deliveries.poll(2, TimeUnit.SECONDS);
            if (d == null) break;
            rest.add((String) d[0]);
            cons.basicAck((Long) d[1], false);
        }
        check(rest.equals(Arrays.asList("m3", "m4")), "after ack: m3, m4 delivered " + rest);
        cons.basicCancel(ctag);
        Thread.sleep(100);
        AMQP.Queue.DeclareOk qaok = ch.queueDeclarePassive(qa);
        check(qaok.getMessageCount() == 0 && qaok.getConsumerCount() == 0, "all acked, consumer cancelled");

        // ---- basic.get
        ch.basicPublish("", qa, null, b("g1"));
        ch.basicPublish("", qa, null, b("g2"));
        Thread.sleep(100);
        GetResponse g = ch.basicGet(qa, false);
        check(g != null && "g1".equals(new String(g.getBody(), "UTF-8")) && g.getMessageCount() == 1 && !g.getEnvelope().isRedeliver(),
            "basic.get g1 with message_count 1");
        ch.basicAck(g.getEnvelope().getDeliveryTag(), false);
        g = ch.basicGet(qa, true);
        check(g != null && "g2".equals(new String(g.getBody(), "UTF-8")) && g.getMessageCount() == 0, "basic.get g2 (no-ack)");
        check(ch.basicGet(qa, true) == null, "basic.get on empty queue -> get-empty");

        // ---- dead-lettering on TTL expiry
        String dlx = "js.dlx." + S;
        ch.exchangeDeclare(dlx, BuiltinExchangeType.FANOUT);
        String dlq = ch.queueDeclare("", false, true, true, null).getQueue();
        ch.queueBind(dlq, dlx, "");
        String src = "js.ttl." + S;
        ch.queueDeclare(src, false, true, true, map("x-message-ttl", 50, "x-dead-letter-exchange", dlx));
        ch.basicPublish("", src, null, b("expired"));
        GetResponse dead = poll(ch, dlq, 3000);
        check(dead != null && "expired".equals(new String(dead.getBody(), "UTF-8")), "TTL-expired message dead-lettered");
        check(dlx.equals(dead.getEnvelope().getExchange()) && src.equals(dead.getEnvelope().getRoutingKey()),
            "dead letter delivered from exchange '" + dead.getEnvelope().getExchange() + "' with routing key '" + dead.getEnvelope().getRoutingKey() + "'");
        Object xd0 = dead.getProps().getHeaders() == null ? null : dead.getProps().getHeaders().get("x-death");
        Map<?, ?> death = xd0 instanceof List && !((List<?>) xd0).isEmpty() ? (Map<?, ?>) ((List<?>) xd0).get(0) : null;
        check(death != null && "expired".equals(String.valueOf(death.get("reason"))) && src.equals(String.valueOf(death.get("queue")))
            && "".equals(String.valueOf(death.get("exchange"))), "x-death present: " + death);

        // ---- channel-level errors: each closes only its channel
        expectChannelClose(c, 406, "publish with user_id 'mallory' (login 'guest')", x -> {
            x.basicPublish("", qp, new AMQP.BasicProperties.Builder().userId("mallory").build(), b("bad"));
            x.queueDeclarePassive(qp);
        });
        check(ch.queueDeclarePassive(qp).getMessageCount() == 0, "message with forged user_id was not enqueued");
        expectOk(c, "re-declare amq.topic as durable topic -> declare-ok", x -> x.exchangeDeclare("amq.topic", "topic", true));
        expectChannelClose(c, 403, "declare exchange amq.foo." + S, x -> x.exchangeDeclare("amq.foo." + S, "direct"));
        expectOk(c, "queue.unbind naming a missing exchange -> unbind-ok", x -> x.queueUnbind(qa, "js.missing-exchange." + S, "rk"));
        expectChannelClose(c, 404, "passive declare of missing queue", x -> x.queueDeclarePassive("js.missing." + S));
        Channel ch2 = c.createChannel();
        check(ch2.queueDeclarePassive(qa).getQueue().equals(qa), "connection usable on a new channel after 404");

        // ---- server-initiated consumer cancel
        String qx = ch.queueDeclare("js.cancel." + S, false, false, false, null).getQueue();
        Channel cch = c.createChannel();
        BlockingQueue<String> cancels = new LinkedBlockingQueue<>();
        cch.basicConsume(qx, true, "js-ctag", new DefaultConsumer(cch) {
            @Override
            public void handleCancel(String tag) {
                cancels.add(tag);
            }
        });
        ch.queueDelete(qx);
        check("js-ctag".equals(cancels.poll(2, TimeUnit.SECONDS)), "queue deleted -> handleCancel(js-ctag)");
        check(cch.isOpen(), "consumer's channel still open after basic.cancel from the server");

        // ---- 1 MiB and empty bodies
        byte[] big = new byte[1 << 20];
        new Random(7).nextBytes(big);
        String qb = ch.queueDeclare("", false, true, true, null).getQueue();
        cc.basicPublish("", qb, null, big);
        cc.basicPublish("", qb, null, new byte[0]);
        cc.waitForConfirmsOrDie(5000);
        GetResponse bg = poll(ch, qb, 2000), eg = poll(ch, qb, 2000);
        check(bg != null && Arrays.equals(bg.getBody(), big), "1 MiB body round trip");
        check(eg != null && eg.getBody().length == 0, "empty body round trip");

        // ---- frame_max 4096 (what amqplib < 0.10.6 asks for by default)
        ConnectionFactory small = factory();
        small.setRequestedFrameMax(4096);
        Connection c4 = null;
        try {
            c4 = small.newConnection();
        } catch (IOException e) {
            check(false, "connect with frame_max 4096 -> " + closeReason(e));
        }
        check(c4.getFrameMax() == 4096, "frame_max 4096 negotiated: " + c4.getFrameMax());
        Channel ch4 = c4.createChannel();
        String q4 = ch4.queueDeclare("", false, true, true, null).getQueue();
        byte[] mid = Arrays.copyOf(big, 20000);
        ch4.basicPublish("", q4, null, mid);
        GetResponse g4 = poll(ch4, q4, 2000);
        check(g4 != null && Arrays.equals(g4.getBody(), mid), "20000-byte body with frame_max 4096");
        c4.close();

        // ---- transactions
        Channel tx = c.createChannel();
        tx.txSelect();
        String qt = tx.queueDeclare("", false, true, true, null).getQueue();
        tx.basicPublish("", qt, null, b("t1"));
        check(tx.queueDeclarePassive(qt).getMessageCount() == 0, "tx: uncommitted publish not visible");
        tx.txCommit();
        check(tx.queueDeclarePassive(qt).getMessageCount() == 1, "tx: commit -> 1 message");
        tx.basicPublish("", qt, null, b("t2"));
        tx.txRollback();
        check(tx.queueDeclarePassive(qt).getMessageCount() == 1, "tx: rolled-back publish discarded");

        // ---- direct reply-to RPC
        String rpcq = ch.queueDeclare("", false, true, true, null).getQueue();
        Channel server = c.createChannel();
        BlockingQueue<String> seenReplyTo = new LinkedBlockingQueue<>();
        server.basicConsume(rpcq, false, (tag, d) -> {
            seenReplyTo.add(String.valueOf(d.getProperties().getReplyTo()));
            server.basicPublish("", d.getProperties().getReplyTo(),
                new AMQP.BasicProperties.Builder().correlationId(d.getProperties().getCorrelationId()).build(),
                ("pong:" + new String(d.getBody(), "UTF-8")).getBytes("UTF-8"));
            server.basicAck(d.getEnvelope().getDeliveryTag(), false);
        }, tag -> { });
        Channel client = c.createChannel();
        BlockingQueue<String> replies = new LinkedBlockingQueue<>();
        client.basicConsume("amq.rabbitmq.reply-to", true,
            (tag, d) -> replies.add(d.getProperties().getCorrelationId() + " " + new String(d.getBody(), "UTF-8")), tag -> { });
        client.basicPublish("", rpcq, new AMQP.BasicProperties.Builder().replyTo("amq.rabbitmq.reply-to").correlationId("c-" + S).build(), b("ping"));
        String reply = replies.poll(3, TimeUnit.SECONDS);
        String rt = seenReplyTo.poll(0, TimeUnit.SECONDS);
        check(rt != null && rt.startsWith("amq.rabbitmq.reply-to."), "request's reply_to rewritten: " + rt);
        check(("c-" + S + " pong:ping").equals(reply), "direct reply-to reply arrived: " + reply);

        // ---- cleanup
        ch = c.createChannel();
        ch.queueDelete(durable);
        for (String x : new String[]{xd, xt, xf, xh, dlx}) ch.exchangeDelete(x);
        ok("cleanup");

        // ---- last: basic.qos with prefetch_size != 0 closes the connection with 540 NOT_IMPLEMENTED
        Method m = null;
        try {
            c.createChannel().basicQos(1000, 0, false);
        } catch (IOException | ShutdownSignalException e) {
            m = closeReason(e);
        }
        check(m instanceof AMQP.Connection.Close && closeCode(m) == 540, "basic.qos prefetch_size=1000 -> connection.close 540 (got " + m + ")");
        check(!c.isOpen(), "connection closed");

        System.out.println("java smoke test passed");
        System.exit(0);
    }
}
