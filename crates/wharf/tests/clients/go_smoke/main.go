// amqp091-go (github.com/rabbitmq/amqp091-go, the Go client RabbitMQ maintains; Debian's
// golang-github-rabbitmq-amqp091-go-dev 1.5.0) against a broker. Checks what Go applications do with it: the
// default Dial's negotiation (frame_max, channel_max, heartbeat, locale, capabilities), auth and vhost failures,
// a small frame_max, every exchange kind and flag, exchange-to-exchange bindings, topic/headers/fanout/alternate
// exchange routing, durable/exclusive/auto-delete/server-named queues and their arguments (TTL, per-message
// expiration, max-length, reject-publish, priority, dead-lettering with x-death, single active consumer,
// consumer priorities), the round trip of every Publishing field and of headers of each Go type, empty and 5 MiB
// bodies, mandatory returns, confirms (NotifyPublish and DeferredConfirmation), transactions, get/ack/nack/reject
// with multiple and requeue, Recover(true), prefetch per consumer and global, exclusive consumers, cancel and
// NotifyCancel on queue deletion, the channel errors Go apps see through NotifyClose (Code, Reason, Server,
// Recover) with the connection surviving, the connection errors (503, 530, 540), Flow(true), direct reply-to,
// 300 concurrent channels, a 2 s heartbeat over 6 s idle, and Connection.Close. Every check passes against
// RabbitMQ 3.10.8. DeferredConfirmation.Wait() is bounded by a context because amqp091-go 1.5.0 can lose a
// confirmation that arrives before it registers the DeferredConfirmation (a client race, seen with both brokers).
//
// It ends with details() (a graceful Connection.Close reported without an error 20 times, 405 for an
// exclusive-flag mismatch, error texts, the cut of a reply-text over 255 bytes), where Wharf was once seen to
// differ from RabbitMQ 3.10.8.
//
// Build and run offline (no Go module proxy needed; GOPATH mode against Debian's packaged sources):
//
//	apt-get install -y golang-go golang-github-rabbitmq-amqp091-go-dev
//	cd crates/wharf/tests/clients/go_smoke
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/go_smoke . && /tmp/go_smoke 127.0.0.1:PORT
//
// (or: GO111MODULE=off GOPATH=/usr/share/gocode go run main.go 127.0.0.1:PORT)
// Prints `ok: ...` per check; prints `FAILED: ...` and exits 1 on the first mismatch.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	addr string
	url  string
	S    = fmt.Sprintf("%d-%x", os.Getpid(), time.Now().UnixNano()&0xffffffffff)
)

func ok(what string, a ...interface{}) { fmt.Printf("ok: "+what+"\n", a...) }

func fail(what string, a ...interface{}) {
	fmt.Printf("FAILED: "+what+"\n", a...)
	os.Exit(1)
}

func check(cond bool, what string, a ...interface{}) {
	if !cond {
		fail(what, a...)
	}
	ok(what, a...)
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %s", what, es(err))
	}
}

func n(x string) string { return "go-smoke." + S + "." + x }

func es(err error) string {
	if err == nil {
		return "nil"
	}
	if e, isAmqp := err.(*amqp.Error); isAmqp {
		if e == nil {
			return "nil"
		}
		return fmt.Sprintf("Error{Code:%d Reason:%q Server:%v Recover:%v}", e.Code, e.Reason, e.Server, e.Recover)
	}
	return err.Error()
}

// fv renders a table value with its Go type, sorted, so a round trip can be compared as a string.
func fv(v interface{}) string {
	switch x := v.(type) {
	case amqp.Table:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := []string{}
		for _, k := range keys {
			parts = append(parts, k+":"+fv(x[k]))
		}
		return "{" + strings.Join(parts, " ") + "}"
	case []interface{}:
		parts := []string{}
		for _, e := range x {
			parts = append(parts, fv(e))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case []byte:
		return fmt.Sprintf("bytes(%q)", x)
	case time.Time:
		return "time(" + x.UTC().Format(time.RFC3339) + ")"
	case string:
		return fmt.Sprintf("%q", x)
	case nil:
		return "nil"
	default:
		return fmt.Sprintf("%T(%v)", v, v)
	}
}

func dial() *amqp.Connection {
	c, err := amqp.Dial(url)
	must(err, "dial")
	return c
}

type C struct {
	*amqp.Channel
	closed chan *amqp.Error
}

func open(c *amqp.Connection) *C {
	ch, err := c.Channel()
	must(err, "open channel")
	return &C{ch, ch.NotifyClose(make(chan *amqp.Error, 1))}
}

// expectChannelError runs op on a fresh channel; the broker must close that channel with code and reason
// (seen both as op's error, if op waits for a reply, and through NotifyClose), and the connection must stay usable.
func expectChannelError(c *amqp.Connection, what string, code int, reason string, op func(ch *C) error) {
	ch := open(c)
	opErr := op(ch)
	var got *amqp.Error
	select {
	case got = <-ch.closed:
	case <-time.After(3 * time.Second):
	}
	if got == nil {
		fail("%s -> expected channel.close %d, channel still open (op returned %s)", what, code, es(opErr))
	}
	if got.Code != code || got.Reason != reason || !got.Server || !got.Recover {
		fail("%s -> expected Error{Code:%d Reason:%q Server:true Recover:true}, got %s", what, code, reason, es(got))
	}
	if opErr != nil {
		if e, isAmqp := opErr.(*amqp.Error); !isAmqp || (e.Code != code && e.Code != amqp.ChannelError) {
			fail("%s -> op returned %s", what, es(opErr))
		}
	}
	probe, err := c.Channel()
	if err == nil {
		err = probe.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil)
	}
	if err != nil {
		fail("%s: connection unusable afterwards: %s", what, es(err))
	}
	probe.Close()
	ok("%s -> channel closed %d %q, connection still usable", what, code, reason)
}

// expectConnectionError runs op on a channel of a new connection; the broker must close the connection with code.
func expectConnectionError(what string, code int, reason string, op func(ch *C) error) {
	c := dial()
	closed := c.NotifyClose(make(chan *amqp.Error, 1))
	ch := open(c)
	op(ch)
	select {
	case e := <-closed:
		check(e != nil && e.Code == code && e.Reason == reason && e.Server && !e.Recover,
			"%s -> connection closed %d %q (got %s)", what, code, reason, es(e))
	case <-time.After(3 * time.Second):
		c.Close()
		fail("%s -> connection still open, expected %d", what, code)
	}
}

// publishDeferred publishes with PublishWithDeferredConfirmWithContext under a 2 s context. amqp091-go 1.5.0
// registers the DeferredConfirmation only after the publish is on the wire, so a broker that confirms before the
// registration has its ack dropped and a bare Wait() blocks for ever (rabbitmq/amqp091-go#182, a client race):
// the context bounds that, and the channel's NotifyPublish listener is the reference for what was confirmed.
func publishDeferred(ch *C, q, body string) deferred {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	time.AfterFunc(3*time.Second, cancel)
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, amqp.Publishing{Body: []byte(body)})
	must(err, "PublishWithDeferredConfirmWithContext")
	if dc == nil {
		fail("PublishWithDeferredConfirmWithContext returned no DeferredConfirmation on a confirm channel")
	}
	return deferred{dc, time.Now()}
}

type deferred struct {
	*amqp.DeferredConfirmation
	sent time.Time
}

// wait returns Wait()'s result and whether the client missed the confirmation (see publishDeferred).
func (d deferred) wait() (ack, missed bool) {
	ack = d.Wait()
	return ack, !ack && time.Since(d.sent) > 1500*time.Millisecond
}

func recv(d <-chan amqp.Delivery, t time.Duration) (amqp.Delivery, bool) {
	select {
	case m, open := <-d:
		return m, open
	case <-time.After(t):
		return amqp.Delivery{}, false
	}
}

// collect reads deliveries until want have arrived (or 3 s passed), then for settle longer to catch extras.
func collect(d <-chan amqp.Delivery, want int, settle time.Duration) []amqp.Delivery {
	out := []amqp.Delivery{}
	deadline := time.Now().Add(3 * time.Second)
	for len(out) < want && time.Now().Before(deadline) {
		if m, got := recv(d, time.Until(deadline)); got {
			out = append(out, m)
		}
	}
	for {
		m, got := recv(d, settle)
		if !got {
			return out
		}
		out = append(out, m)
	}
}

func bodies(ds []amqp.Delivery) string {
	s := []string{}
	for _, d := range ds {
		b := string(d.Body)
		if d.Redelivered {
			b += "(r)"
		}
		s = append(s, b)
	}
	return strings.Join(s, ",")
}

func publish(ch *C, ex, rk, body string) {
	must(ch.Publish(ex, rk, false, false, amqp.Publishing{Body: []byte(body)}), "publish "+body)
}

// waitDepth polls until the queue holds want messages.
func waitDepth(ch *C, q string, want int) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		qi, err := ch.QueueInspect(q)
		must(err, "inspect "+q)
		if qi.Messages == want {
			return
		}
		if time.Now().After(deadline) {
			fail("queue %s holds %d messages, expected %d", q, qi.Messages, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// getAll drains the queue with basic.get and returns the bodies in order.
func getAll(ch *C, q string) string {
	s := []string{}
	for {
		d, got, err := ch.Get(q, true)
		must(err, "get "+q)
		if !got {
			return strings.Join(s, ",")
		}
		s = append(s, string(d.Body))
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: go_smoke 127.0.0.1:PORT")
		os.Exit(2)
	}
	addr = os.Args[1]
	url = "amqp://guest:guest@" + addr + "/"
	time.AfterFunc(60*time.Second, func() {
		fmt.Println("FAILED: timed out after 60 s")
		os.Exit(1)
	})
	start := time.Now()

	// A 2 s heartbeat idles 6 s while the other checks run.
	heartbeat := make(chan string, 1)
	go func() {
		c, err := amqp.DialConfig(url, amqp.Config{Heartbeat: 2 * time.Second, Locale: "en_US"})
		if err != nil {
			heartbeat <- "dial: " + es(err)
			return
		}
		if c.Config.Heartbeat != 2*time.Second {
			heartbeat <- fmt.Sprintf("negotiated heartbeat %v", c.Config.Heartbeat)
			return
		}
		closed := c.NotifyClose(make(chan *amqp.Error, 1))
		ch, _ := c.Channel()
		select {
		case e := <-closed:
			heartbeat <- "closed while idle: " + es(e)
			return
		case <-time.After(6 * time.Second):
		}
		_, err = ch.QueueDeclare("", false, true, true, false, nil)
		c.Close()
		heartbeat <- es(err)
	}()

	connect()
	c := dial()
	exchanges(c)
	queues(c)
	queueArguments(c)
	publishing(c)
	confirms(c)
	transactions(c)
	consuming(c)
	prefetch(c)
	channelErrors(c)
	connectionErrors()
	directReplyTo(c)
	manyChannels(c)

	check(<-heartbeat == "nil", "heartbeat 2 s: connection alive and usable after 6 s idle")
	closed := c.NotifyClose(make(chan *amqp.Error, 1))
	must(c.Close(), "Connection.Close")
	for range closed { // what it carries after a graceful close is checked in details()
	}
	_, err := c.Channel()
	check(c.IsClosed() && err == amqp.ErrClosed, "Connection.Close returns nil; IsClosed; Channel() -> ErrClosed")
	details()
	fmt.Printf("amqp091-go smoke test passed in %.1f s\n", time.Since(start).Seconds())
}

func connect() {
	c := dial()
	check(c.Major == 0 && c.Minor == 9, "connection.start version 0-9 (got %d-%d)", c.Major, c.Minor)
	check(c.Config.FrameSize == 131072 && c.Config.ChannelMax == 2047 && c.Config.Heartbeat == 10*time.Second &&
		c.Config.Locale == "en_US" && c.Config.SASL[0].Mechanism() == "PLAIN",
		"default Dial negotiates frame_max 131072, channel_max 2047, heartbeat 10s, en_US, PLAIN (got %d %d %v %s)",
		c.Config.FrameSize, c.Config.ChannelMax, c.Config.Heartbeat, c.Config.Locale)
	caps, _ := c.Properties["capabilities"].(amqp.Table)
	for _, k := range []string{"publisher_confirms", "basic.nack", "consumer_cancel_notify", "connection.blocked",
		"exchange_exchange_bindings", "per_consumer_qos", "direct_reply_to", "consumer_priorities",
		"authentication_failure_close"} {
		check(caps[k] == true, "capability %s = true", k)
	}
	for _, k := range []string{"product", "version", "platform", "copyright", "information", "cluster_name"} {
		_, isString := c.Properties[k].(string)
		check(isString, "server property %s is a string", k)
	}
	c.Close()

	_, err := amqp.Dial("amqp://guest:wrong@" + addr + "/")
	check(err == amqp.ErrCredentials, "bad password -> ErrCredentials (got %s)", es(err))
	_, err = amqp.Dial("amqp://guest:guest@" + addr + "/go-smoke-no-such-vhost")
	check(err == amqp.ErrVhost, "unknown vhost -> ErrVhost (got %s)", es(err))

	c2, err := amqp.DialConfig(url, amqp.Config{FrameSize: 4096, ChannelMax: 10, Locale: "en_US"})
	must(err, "DialConfig frame_max 4096")
	check(c2.Config.FrameSize == 4096 && c2.Config.ChannelMax == 10 && c2.Config.Heartbeat == 60*time.Second,
		"DialConfig FrameSize 4096 ChannelMax 10 Heartbeat 0 -> 4096, 10, server's 60s (got %d %d %v)",
		c2.Config.FrameSize, c2.Config.ChannelMax, c2.Config.Heartbeat)
	ch := open(c2)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	must(err, "declare")
	big := bytes.Repeat([]byte("abcdefgh"), 20000)
	hdr := strings.Repeat("h", 1000)
	must(ch.Publish("", q.Name, false, false, amqp.Publishing{Body: big, Headers: amqp.Table{"h": hdr}}), "publish")
	d, got, err := ch.Get(q.Name, true)
	check(got && err == nil && bytes.Equal(d.Body, big) && d.Headers["h"] == hdr,
		"160000-byte body and 1000-byte header over frame_max 4096")
	c2.Close()

	c3, err := amqp.DialConfig(url, amqp.Config{Locale: "de_DE", Properties: amqp.Table{"connection_name": "go-smoke"}})
	check(err == nil, "Dial with locale de_DE and client properties (got %s)", es(err))
	c3.Close()
}

func exchanges(c *amqp.Connection) {
	ch := open(c)
	for _, kind := range []string{"direct", "fanout", "topic", "headers"} {
		for _, f := range [][3]bool{{false, false, false}, {true, false, false}, {false, true, false}, {true, true, true}} {
			name := n(fmt.Sprintf("x.%s.%v.%v.%v", kind, f[0], f[1], f[2]))
			must(ch.ExchangeDeclare(name, kind, f[0], f[1], f[2], false, nil), "declare "+name)
			must(ch.ExchangeDeclarePassive(name, kind, f[0], f[1], f[2], false, nil), "passive "+name)
			must(ch.ExchangeDeclare(name, kind, f[0], f[1], f[2], false, nil), "redeclare "+name)
			must(ch.ExchangeDelete(name, false, false), "delete "+name)
		}
		ok("exchange %s: declare/passive/redeclare/delete, durable/auto-delete/internal combinations", kind)
	}
	must(ch.ExchangeDeclare(n("x.nowait"), "fanout", false, false, false, true, nil), "declare nowait")
	must(ch.ExchangeDeclarePassive(n("x.nowait"), "fanout", false, false, false, false, nil), "passive after nowait")
	must(ch.ExchangeDelete(n("x.nowait"), false, true), "delete nowait")
	ok("exchange declare/delete with noWait")
	must(ch.ExchangeDelete(n("x.never-declared"), false, false), "delete missing")
	ok("exchange.delete of a missing exchange -> delete-ok")
	must(ch.ExchangeDeclare("amq.direct", "direct", true, false, false, false, nil), "redeclare amq.direct")
	ok("redeclare amq.direct as durable direct -> declare-ok")

	// exchange-to-exchange
	must(ch.ExchangeDeclare(n("x.src"), "topic", false, false, false, false, nil), "declare src")
	must(ch.ExchangeDeclare(n("x.dst"), "direct", false, false, false, false, nil), "declare dst")
	q, err := ch.QueueDeclare(n("q.e2e"), false, false, false, false, nil)
	must(err, "declare q.e2e")
	must(ch.QueueBind(q.Name, "k.1", n("x.dst"), false, nil), "bind")
	must(ch.ExchangeBind(n("x.dst"), "k.*", n("x.src"), false, nil), "exchange bind")
	publish(ch, n("x.src"), "k.1", "e1")
	publish(ch, n("x.src"), "k.2", "e2")
	waitDepth(ch, q.Name, 1)
	check(getAll(ch, q.Name) == "e1", "ExchangeBind: topic source -> direct destination -> queue")
	must(ch.ExchangeUnbind(n("x.dst"), "k.*", n("x.src"), false, nil), "exchange unbind")
	publish(ch, n("x.src"), "k.1", "e3")
	publish(ch, "", q.Name, "marker")
	waitDepth(ch, q.Name, 1)
	check(getAll(ch, q.Name) == "marker", "ExchangeUnbind stops the routing")
	must(ch.ExchangeUnbind(n("x.dst"), "never", n("x.src"), false, nil), "unbind never bound")
	ok("ExchangeUnbind of a binding that does not exist -> unbind-ok")
	must(ch.ExchangeBind(n("x.dst"), "k.1", n("x.src"), false, nil), "exchange bind")
	expectChannelError(c, "ExchangeDelete ifUnused of a bound source", 406,
		fmt.Sprintf("PRECONDITION_FAILED - exchange '%s' in vhost '/' in use", n("x.src")),
		func(x *C) error { return x.ExchangeDelete(n("x.src"), true, false) })
	expectChannelError(c, "ExchangeDelete ifUnused of a destination with a queue binding", 406,
		fmt.Sprintf("PRECONDITION_FAILED - exchange '%s' in vhost '/' in use", n("x.dst")),
		func(x *C) error { return x.ExchangeDelete(n("x.dst"), true, false) })
	must(ch.ExchangeDelete(n("x.src"), false, false), "delete src")
	must(ch.ExchangeDelete(n("x.dst"), false, false), "delete dst")
	_, err = ch.QueueDelete(q.Name, false, false, false)
	must(err, "delete q.e2e")

	// auto-delete exchange goes with its last binding
	must(ch.ExchangeDeclare(n("x.ad"), "fanout", false, true, false, false, nil), "declare auto-delete")
	qa, _ := ch.QueueDeclare("", false, true, true, false, nil)
	must(ch.QueueBind(qa.Name, "", n("x.ad"), false, nil), "bind")
	must(ch.QueueUnbind(qa.Name, "", n("x.ad"), nil), "unbind")
	expectChannelError(c, "auto-delete exchange after its last unbind: passive declare", 404,
		fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", n("x.ad")),
		func(x *C) error { return x.ExchangeDeclarePassive(n("x.ad"), "fanout", false, true, false, false, nil) })

	// routing by kind
	must(ch.ExchangeDeclare(n("x.topic"), "topic", false, true, false, false, nil), "declare topic")
	qt, _ := ch.QueueDeclare("", false, true, true, false, nil)
	for _, k := range []string{"a.*.c", "x.#", "#.end"} {
		must(ch.QueueBind(qt.Name, k, n("x.topic"), false, nil), "bind "+k)
	}
	for _, rk := range []string{"a.b.c", "a.b.b.c", "a..c", "x", "x.y.z", "end", "q.end", "a.b", "", "x."} {
		publish(ch, n("x.topic"), rk, "t:"+rk)
	}
	waitDepth(ch, qt.Name, 7)
	got := getAll(ch, qt.Name)
	check(got == "t:a.b.c,t:a..c,t:x,t:x.y.z,t:end,t:q.end,t:x.", "topic patterns a.*.c x.# #.end (got %s)", got)

	must(ch.ExchangeDeclare(n("x.headers"), "headers", false, true, false, false, nil), "declare headers")
	qh, _ := ch.QueueDeclare("", false, true, true, false, nil)
	must(ch.QueueBind(qh.Name, "", n("x.headers"), false, amqp.Table{"x-match": "all", "a": int32(1), "b": "two"}), "bind all")
	must(ch.QueueBind(qh.Name, "", n("x.headers"), false, amqp.Table{"x-match": "any", "c": true, "d": int64(4)}), "bind any")
	must(ch.QueueBind(qh.Name, "", n("x.headers"), false, amqp.Table{"e": "only"}), "bind default x-match")
	for i, h := range []amqp.Table{
		{"a": int32(1), "b": "two"}, {"a": int64(1), "b": "two"}, {"a": int8(1), "b": "two"}, {"a": int32(1)},
		{"c": true}, {"c": false}, {"d": int32(4)}, {"d": float64(4)}, {"e": "only", "f": 1}, {"e": []byte("only")}, {},
	} {
		must(ch.Publish(n("x.headers"), "", false, false, amqp.Publishing{Headers: h, Body: []byte(fmt.Sprintf("h%d", i))}), "publish")
	}
	waitDepth(ch, qh.Name, 8)
	got = getAll(ch, qh.Name)
	check(got == "h0,h1,h2,h4,h6,h7,h8,h9", "headers exchange all/any/default x-match across int/float/bytes types (got %s)", got)
	expectChannelError(c, "headers binding with x-match bogus", 406,
		`PRECONDITION_FAILED - Invalid x-match field value <<"bogus">>; expected all, any, all-with-x, or any-with-x`,
		func(x *C) error {
			return x.QueueBind(qh.Name, "", n("x.headers"), false, amqp.Table{"x-match": "bogus"})
		})

	must(ch.ExchangeDeclare(n("x.fanout"), "fanout", false, true, false, false, nil), "declare fanout")
	must(ch.QueueBind(qh.Name, "ignored", n("x.fanout"), false, nil), "bind fanout")
	publish(ch, n("x.fanout"), "whatever", "fan")
	publish(ch, "", qh.Name, "default")
	waitDepth(ch, qh.Name, 2)
	check(getAll(ch, qh.Name) == "fan,default", "fanout ignores the routing key; default exchange routes by queue name")

	must(ch.ExchangeDeclare(n("x.ae"), "direct", false, true, false, false, amqp.Table{"alternate-exchange": n("x.alt")}), "declare with AE")
	must(ch.ExchangeDeclare(n("x.alt"), "fanout", false, true, false, false, nil), "declare alt")
	qae, _ := ch.QueueDeclare("", false, true, true, false, nil)
	must(ch.QueueBind(qae.Name, "", n("x.alt"), false, nil), "bind alt")
	publish(ch, n("x.ae"), "unrouted", "via-ae")
	waitDepth(ch, qae.Name, 1)
	check(getAll(ch, qae.Name) == "via-ae", "alternate-exchange receives what its exchange cannot route")

	expectChannelError(c, "ExchangeDeclarePassive of a missing exchange", 404,
		fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", n("x.missing")),
		func(x *C) error {
			return x.ExchangeDeclarePassive(n("x.missing"), "direct", false, false, false, false, nil)
		})
	must(ch.ExchangeDeclare(n("x.typed"), "direct", false, false, false, false, nil), "declare typed")
	expectChannelError(c, "redeclare a direct exchange as fanout", 406,
		fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in vhost '/': received 'fanout' but current is 'direct'", n("x.typed")),
		func(x *C) error { return x.ExchangeDeclare(n("x.typed"), "fanout", false, false, false, false, nil) })
	expectChannelError(c, "redeclare a transient exchange as durable", 406,
		fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '%s' in vhost '/': received 'true' but current is 'false'", n("x.typed")),
		func(x *C) error { return x.ExchangeDeclare(n("x.typed"), "direct", true, false, false, false, nil) })
	must(ch.ExchangeDeclarePassive(n("x.typed"), "fanout", false, false, false, false, nil), "passive other kind")
	ok("ExchangeDeclarePassive ignores the kind and flags")
	must(ch.ExchangeDelete(n("x.typed"), false, false), "delete typed")
	expectChannelError(c, "declare an amq.* exchange", 403,
		fmt.Sprintf("ACCESS_REFUSED - exchange name 'amq.go-smoke-%s' contains reserved prefix 'amq.*'", S),
		func(x *C) error {
			return x.ExchangeDeclare("amq.go-smoke-"+S, "direct", false, false, false, false, nil)
		})
	expectChannelError(c, "delete amq.direct", 403,
		"ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
		func(x *C) error { return x.ExchangeDelete("amq.direct", false, false) })
	expectChannelError(c, "QueueBind to the default exchange", 403,
		"ACCESS_REFUSED - operation not permitted on the default exchange",
		func(x *C) error { return x.QueueBind(qh.Name, "k", "", false, nil) })
	must(ch.ExchangeDeclare(n("x.internal"), "fanout", false, true, true, false, nil), "declare internal")
	expectChannelError(c, "Publish to an internal exchange", 403,
		fmt.Sprintf("ACCESS_REFUSED - cannot publish to internal exchange '%s' in vhost '/'", n("x.internal")),
		func(x *C) error {
			return x.Publish(n("x.internal"), "", false, false, amqp.Publishing{Body: []byte("x")})
		})
	must(ch.ExchangeDelete(n("x.internal"), false, false), "delete internal")
	expectChannelError(c, "Publish to a missing exchange (reported through NotifyClose)", 404,
		fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", n("x.missing")),
		func(x *C) error {
			return x.Publish(n("x.missing"), "", false, false, amqp.Publishing{Body: []byte("x")})
		})
	expectChannelError(c, "ExchangeBind from a missing source", 404,
		fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", n("x.missing")),
		func(x *C) error { return x.ExchangeBind(n("x.fanout"), "", n("x.missing"), false, nil) })
	for _, x := range []string{"x.topic", "x.headers", "x.fanout", "x.ae", "x.alt"} {
		must(ch.ExchangeDelete(n(x), false, false), "delete "+x)
	}
	ch.Close()
}

func queues(c *amqp.Connection) {
	ch := open(c)
	for _, f := range [][3]bool{{false, false, false}, {true, false, false}, {false, true, false}, {false, false, true}, {true, true, true}} {
		name := n(fmt.Sprintf("q.%v.%v.%v", f[0], f[1], f[2]))
		q, err := ch.QueueDeclare(name, f[0], f[1], f[2], false, nil)
		must(err, "declare "+name)
		q2, err := ch.QueueDeclarePassive(name, f[0], f[1], f[2], false, nil)
		must(err, "passive "+name)
		q3, err := ch.QueueInspect(name)
		must(err, "inspect "+name)
		cnt, err := ch.QueueDelete(name, false, false, false)
		must(err, "delete "+name)
		check(q.Name == name && q2 == q && q3 == q && cnt == 0,
			"queue durable=%v autoDelete=%v exclusive=%v: declare/passive/inspect/delete", f[0], f[1], f[2])
	}
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	must(err, "server-named")
	q2, _ := ch.QueueDeclare("", false, false, true, false, nil)
	check(strings.HasPrefix(q.Name, "amq.gen-") && q2.Name != q.Name, "server-named queues: amq.gen-*, distinct (%s)", q.Name)
	_, err = ch.QueueDeclare(n("q.nowait"), false, false, false, true, nil)
	must(err, "declare nowait")
	_, err = ch.QueueInspect(n("q.nowait"))
	must(err, "inspect nowait")
	_, err = ch.QueueDelete(n("q.nowait"), false, false, false)
	must(err, "delete nowait")
	ok("QueueDeclare with noWait")

	args := amqp.Table{"x-message-ttl": int32(60000), "x-max-length": int32(100), "x-dead-letter-exchange": n("dlx"),
		"x-max-priority": int32(5), "x-single-active-consumer": true, "x-queue-type": "classic"}
	_, err = ch.QueueDeclare(n("q.args"), true, false, false, false, args)
	must(err, "declare with args")
	_, err = ch.QueueDeclare(n("q.args"), true, false, false, false, amqp.Table{"x-message-ttl": int64(60000),
		"x-max-length": int(100), "x-dead-letter-exchange": n("dlx"), "x-max-priority": int8(5),
		"x-single-active-consumer": true, "x-queue-type": "classic"})
	check(err == nil, "redeclare with equal arguments of other integer widths -> declare-ok (%s)", es(err))
	expectChannelError(c, "redeclare with another x-message-ttl", 406,
		fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': received '1' but current is '60000'", n("q.args")),
		func(x *C) error {
			a := amqp.Table{}
			for k, v := range args {
				a[k] = v
			}
			a["x-message-ttl"] = int32(1)
			_, e := x.QueueDeclare(n("q.args"), true, false, false, false, a)
			return e
		})
	expectChannelError(c, "redeclare a durable queue as transient", 406,
		fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': received 'false' but current is 'true'", n("q.args")),
		func(x *C) error { _, e := x.QueueDeclare(n("q.args"), false, false, false, false, args); return e })
	_, err = ch.QueueDeclarePassive(n("q.args"), false, true, false, false, nil)
	check(err == nil, "QueueDeclarePassive ignores flags and arguments (%s)", es(err))
	_, err = ch.QueueDelete(n("q.args"), false, false, false)
	must(err, "delete q.args")
	expectChannelError(c, "QueueDeclarePassive of a missing queue", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.missing")),
		func(x *C) error {
			_, e := x.QueueDeclarePassive(n("q.missing"), false, false, false, false, nil)
			return e
		})
	expectChannelError(c, "declare an amq.* queue", 403,
		fmt.Sprintf("ACCESS_REFUSED - queue name 'amq.go-smoke-%s' contains reserved prefix 'amq.*'", S),
		func(x *C) error { _, e := x.QueueDeclare("amq.go-smoke-"+S, false, false, false, false, nil); return e })
	for _, tc := range []struct{ what, arg, reason string }{
		{"x-message-ttl -1", "x-message-ttl", "{value_negative,-1}"},
		{"x-max-length -1", "x-max-length", "{value_negative,-1}"},
		{"x-max-priority 300", "x-max-priority", "{max_value_exceeded,300}"},
		{"x-expires 0", "x-expires", "{value_zero,0}"},
		{"x-overflow bogus", "x-overflow", "invalid_overflow"},
	} {
		v := map[string]interface{}{"x-message-ttl": int32(-1), "x-max-length": int32(-1), "x-max-priority": int32(300),
			"x-expires": int32(0), "x-overflow": "bogus"}[tc.arg]
		name := n("q.bad")
		expectChannelError(c, "queue argument "+tc.what, 406,
			fmt.Sprintf("PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost '/': %s", tc.arg, name, tc.reason),
			func(x *C) error {
				_, e := x.QueueDeclare(name, false, false, false, false, amqp.Table{tc.arg: v})
				return e
			})
	}

	// exclusive queues
	ex, _ := ch.QueueDeclare(n("q.excl"), false, false, true, false, nil)
	locked := fmt.Sprintf("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.", ex.Name)
	other := dial()
	for _, tc := range []struct {
		what string
		op   func(x *C) error
	}{
		{"declare", func(x *C) error { _, e := x.QueueDeclare(ex.Name, false, false, true, false, nil); return e }},
		{"passive declare", func(x *C) error { _, e := x.QueueDeclarePassive(ex.Name, false, false, true, false, nil); return e }},
		{"consume", func(x *C) error { _, e := x.Consume(ex.Name, "", true, false, false, false, nil); return e }},
		{"get", func(x *C) error { _, _, e := x.Get(ex.Name, true); return e }},
		{"purge", func(x *C) error { _, e := x.QueuePurge(ex.Name, false); return e }},
		{"bind", func(x *C) error { return x.QueueBind(ex.Name, "k", "amq.direct", false, nil) }},
		{"delete", func(x *C) error { _, e := x.QueueDelete(ex.Name, false, false, false); return e }},
	} {
		expectChannelError(other, "another connection's "+tc.what+" of an exclusive queue", 405, locked, tc.op)
	}
	other.Close()
	c3 := dial()
	ch3 := open(c3)
	_, err = ch3.QueueDeclare(n("q.excl2"), false, false, true, false, nil)
	must(err, "declare q.excl2")
	c3.Close()
	time.Sleep(100 * time.Millisecond)
	expectChannelError(c, "exclusive queue is deleted with its connection", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.excl2")),
		func(x *C) error {
			_, e := x.QueueDeclarePassive(n("q.excl2"), false, false, true, false, nil)
			return e
		})
	ad, _ := ch.QueueDeclare(n("q.autodel"), false, true, false, false, nil)
	_, err = ch.Consume(ad.Name, "adc", true, false, false, false, nil)
	must(err, "consume autodel")
	qi, _ := ch.QueueInspect(ad.Name)
	check(qi.Consumers == 1, "QueueInspect counts the consumer (%d)", qi.Consumers)
	must(ch.Cancel("adc", false), "cancel")
	time.Sleep(100 * time.Millisecond)
	expectChannelError(c, "auto-delete queue is deleted after its last consumer cancels", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", ad.Name),
		func(x *C) error { _, e := x.QueueDeclarePassive(ad.Name, false, true, false, false, nil); return e })

	// bind / unbind / purge / delete
	qb, _ := ch.QueueDeclare("", false, true, true, false, nil)
	must(ch.QueueBind(qb.Name, "a.#", "amq.topic", false, nil), "bind")
	must(ch.QueueBind(qb.Name, "a.#", "amq.topic", false, nil), "bind again")
	must(ch.QueueBind(qb.Name, "b.#", "amq.topic", true, nil), "bind nowait")
	publish(ch, "amq.topic", "a.1", "a1")
	publish(ch, "amq.topic", "b.1", "b1")
	waitDepth(ch, qb.Name, 2)
	check(getAll(ch, qb.Name) == "a1,b1", "QueueBind (twice, and with noWait) to amq.topic")
	must(ch.QueueUnbind(qb.Name, "a.#", "amq.topic", nil), "unbind")
	must(ch.QueueUnbind(qb.Name, "never", "amq.topic", nil), "unbind never bound")
	must(ch.QueueUnbind(n("q.missing"), "k", "amq.direct", nil), "unbind missing queue")
	must(ch.QueueUnbind(qb.Name, "k", n("x.missing"), nil), "unbind missing exchange")
	publish(ch, "amq.topic", "a.1", "a2")
	publish(ch, "", qb.Name, "marker")
	waitDepth(ch, qb.Name, 1)
	check(getAll(ch, qb.Name) == "marker", "QueueUnbind stops routing; unbinding a missing binding/queue/exchange -> unbind-ok")
	expectChannelError(c, "QueueBind to a missing exchange", 404,
		fmt.Sprintf("NOT_FOUND - no exchange '%s' in vhost '/'", n("x.missing")),
		func(x *C) error { return x.QueueBind(qb.Name, "k", n("x.missing"), false, nil) })
	expectChannelError(c, "QueueBind of a missing queue", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.missing")),
		func(x *C) error { return x.QueueBind(n("q.missing"), "k", "amq.direct", false, nil) })
	qp, _ := ch.QueueDeclare(n("q.purge"), false, false, false, false, nil)
	for i := 0; i < 5; i++ {
		publish(ch, "", qp.Name, "p")
	}
	waitDepth(ch, qp.Name, 5)
	cnt, err := ch.QueuePurge(qp.Name, false)
	check(cnt == 5 && err == nil, "QueuePurge -> 5 (got %d %s)", cnt, es(err))
	expectChannelError(c, "QueuePurge of a missing queue", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.missing")),
		func(x *C) error { _, e := x.QueuePurge(n("q.missing"), false); return e })
	publish(ch, "", qp.Name, "keep")
	waitDepth(ch, qp.Name, 1)
	expectChannelError(c, "QueueDelete ifEmpty of a queue with a message", 406,
		fmt.Sprintf("PRECONDITION_FAILED - queue '%s' in vhost '/' not empty", qp.Name),
		func(x *C) error { _, e := x.QueueDelete(qp.Name, false, true, false); return e })
	holder := open(c)
	_, err = holder.Consume(qp.Name, "holder", false, false, false, false, nil)
	must(err, "consume")
	expectChannelError(c, "QueueDelete ifUnused of a queue with a consumer", 406,
		fmt.Sprintf("PRECONDITION_FAILED - queue '%s' in vhost '/' in use", qp.Name),
		func(x *C) error { _, e := x.QueueDelete(qp.Name, true, false, false); return e })
	holder.Close()
	time.Sleep(50 * time.Millisecond)
	cnt, err = ch.QueueDelete(qp.Name, true, false, false)
	check(cnt == 1 && err == nil, "QueueDelete ifUnused once the consumer is gone -> 1 message (got %d %s)", cnt, es(err))
	cnt, err = ch.QueueDelete(n("q.missing"), true, true, false)
	check(cnt == 0 && err == nil, "QueueDelete of a missing queue -> delete-ok 0 (got %d %s)", cnt, es(err))
	ch.QueueDelete(ex.Name, false, false, false)
	ch.Close()
}

func queueArguments(c *amqp.Connection) {
	ch := open(c)
	qt, _ := ch.QueueDeclare(n("q.ttl"), false, false, false, false, amqp.Table{"x-message-ttl": int32(100)})
	publish(ch, "", qt.Name, "ttl")
	time.Sleep(300 * time.Millisecond)
	check(getAll(ch, qt.Name) == "", "x-message-ttl 100: message gone after 300 ms")
	ch.QueueDelete(qt.Name, false, false, false)
	qt, _ = ch.QueueDeclare(n("q.expiration"), false, false, false, false, nil)
	must(ch.Publish("", qt.Name, false, false, amqp.Publishing{Body: []byte("exp"), Expiration: "50"}), "publish")
	must(ch.Publish("", qt.Name, false, false, amqp.Publishing{Body: []byte("keep"), Expiration: "60000"}), "publish")
	time.Sleep(200 * time.Millisecond)
	kept, isKept, _ := ch.Get(qt.Name, true)
	check(isKept && string(kept.Body) == "keep" && kept.Expiration == "60000" && getAll(ch, qt.Name) == "",
		"per-message Expiration 50 expires; Expiration 60000 is kept and delivered with its expiration")
	ch.QueueDelete(qt.Name, false, false, false)
	expectChannelError(c, "Publish with Expiration abc", 406, "PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
		func(x *C) error {
			return x.Publish("amq.direct", "x", false, false, amqp.Publishing{Body: []byte("x"), Expiration: "abc"})
		})

	qm, _ := ch.QueueDeclare(n("q.maxlen"), false, false, false, false, amqp.Table{"x-max-length": int32(2)})
	for _, b := range []string{"m1", "m2", "m3"} {
		publish(ch, "", qm.Name, b)
	}
	waitDepth(ch, qm.Name, 2)
	check(getAll(ch, qm.Name) == "m2,m3", "x-max-length 2 drops the head")
	ch.QueueDelete(qm.Name, false, false, false)
	qb, _ := ch.QueueDeclare(n("q.maxbytes"), false, false, false, false, amqp.Table{"x-max-length-bytes": int32(10)})
	for _, b := range []string{"aaaa", "bbbb", "cccc"} {
		publish(ch, "", qb.Name, b)
	}
	waitDepth(ch, qb.Name, 2)
	check(getAll(ch, qb.Name) == "bbbb,cccc", "x-max-length-bytes 10 drops the head")
	ch.QueueDelete(qb.Name, false, false, false)

	cf := open(c)
	must(cf.Confirm(false), "confirm")
	confs := cf.NotifyPublish(make(chan amqp.Confirmation, 10))
	qr, _ := cf.QueueDeclare(n("q.rejpub"), false, false, false, false, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
	must(cf.Publish("", qr.Name, false, false, amqp.Publishing{Body: []byte("r1")}), "publish")
	must(cf.Publish("", qr.Name, false, false, amqp.Publishing{Body: []byte("r2")}), "publish")
	c1, c2 := <-confs, <-confs
	check(c1 == amqp.Confirmation{DeliveryTag: 1, Ack: true} && c2 == amqp.Confirmation{DeliveryTag: 2, Ack: false},
		"x-overflow reject-publish: ack then nack (got %+v %+v)", c1, c2)
	dc := publishDeferred(cf, qr.Name, "r3")
	c3 := <-confs
	ack, _ := dc.wait()
	check(dc.DeliveryTag == 3 && c3 == amqp.Confirmation{DeliveryTag: 3, Ack: false} && !ack,
		"deferred publish to the full queue: tag 3 nacked, DeferredConfirmation.Wait() false")
	check(getAll(cf, qr.Name) == "r1", "reject-publish kept the first message")
	cf.QueueDelete(qr.Name, false, false, false)
	cf.Close()

	qp, _ := ch.QueueDeclare(n("q.prio"), false, false, false, false, amqp.Table{"x-max-priority": int32(10)})
	for _, pr := range []uint8{1, 5, 9, 0, 5, 20} {
		must(ch.Publish("", qp.Name, false, false, amqp.Publishing{Body: []byte(fmt.Sprintf("p%d", pr)), Priority: pr}), "publish")
	}
	waitDepth(ch, qp.Name, 6)
	got := getAll(ch, qp.Name)
	check(got == "p20,p9,p5,p5,p1,p0", "x-max-priority 10: highest first, above max counts as max (got %s)", got)
	ch.QueueDelete(qp.Name, false, false, false)

	// dead-lettering
	must(ch.ExchangeDeclare(n("dlx"), "topic", false, false, false, false, nil), "declare dlx")
	qd, _ := ch.QueueDeclare(n("q.dead"), false, false, false, false, nil)
	must(ch.QueueBind(qd.Name, "#", n("dlx"), false, nil), "bind dead")
	qs, _ := ch.QueueDeclare(n("q.src"), false, false, false, false, amqp.Table{"x-dead-letter-exchange": n("dlx")})
	qs2, _ := ch.QueueDeclare(n("q.src2"), false, false, false, false,
		amqp.Table{"x-dead-letter-exchange": n("dlx"), "x-dead-letter-routing-key": "dl.rk", "x-message-ttl": int32(50)})
	must(ch.Publish("", qs.Name, false, false, amqp.Publishing{Body: []byte("dead1"), Headers: amqp.Table{"mine": "v"}, Expiration: "60000"}), "publish")
	waitDepth(ch, qs.Name, 1)
	d, _, _ := ch.Get(qs.Name, false)
	must(d.Reject(false), "reject")
	waitDepth(ch, qd.Name, 1)
	d, _, _ = ch.Get(qd.Name, true)
	deaths, _ := d.Headers["x-death"].([]interface{})
	check(d.Exchange == n("dlx") && d.RoutingKey == qs.Name && len(deaths) == 1 && d.Expiration == "" &&
		d.Headers["mine"] == "v" && d.Headers["x-first-death-reason"] == "rejected" &&
		d.Headers["x-first-death-queue"] == qs.Name && d.Headers["x-first-death-exchange"] == "",
		"dead-lettered on Reject(false): exchange, routing key, x-first-death-*, expiration removed")
	death, _ := deaths[0].(amqp.Table)
	_, isTime := death["time"].(time.Time)
	check(death["count"] == int64(1) && death["reason"] == "rejected" && death["queue"] == qs.Name &&
		death["exchange"] == "" && death["original-expiration"] == "60000" && isTime &&
		fv(death["routing-keys"]) == fv([]interface{}{qs.Name}),
		"x-death: count int64 1, reason, queue, exchange, routing-keys, original-expiration, time (%s)", fv(death))
	publish(ch, "", qs2.Name, "dead2")
	waitDepth(ch, qd.Name, 1)
	d, _, _ = ch.Get(qd.Name, true)
	deaths, _ = d.Headers["x-death"].([]interface{})
	death, _ = deaths[0].(amqp.Table)
	check(d.RoutingKey == "dl.rk" && death["reason"] == "expired" && death["queue"] == qs2.Name,
		"dead-lettered on expiry with x-dead-letter-routing-key (rk %q, %s)", d.RoutingKey, fv(death))
	qml, _ := ch.QueueDeclare(n("q.mldl"), false, false, false, false, amqp.Table{"x-max-length": int32(1), "x-dead-letter-exchange": n("dlx")})
	publish(ch, "", qml.Name, "ml1")
	publish(ch, "", qml.Name, "ml2")
	waitDepth(ch, qd.Name, 1)
	d, _, _ = ch.Get(qd.Name, true)
	deaths, _ = d.Headers["x-death"].([]interface{})
	death, _ = deaths[0].(amqp.Table)
	check(string(d.Body) == "ml1" && death["reason"] == "maxlen", "dead-lettered on x-max-length overflow (reason maxlen)")
	for _, q := range []string{qd.Name, qs.Name, qs2.Name, qml.Name} {
		ch.QueueDelete(q, false, false, false)
	}
	ch.ExchangeDelete(n("dlx"), false, false)

	// single active consumer
	qsac, _ := ch.QueueDeclare(n("q.sac"), false, false, false, false, amqp.Table{"x-single-active-consumer": true})
	a, b := open(c), open(c)
	da, _ := a.Consume(qsac.Name, "sac1", true, false, false, false, nil)
	db, _ := b.Consume(qsac.Name, "sac2", true, false, false, false, nil)
	for i := 0; i < 4; i++ {
		publish(ch, "", qsac.Name, fmt.Sprint("s", i))
	}
	ga, gb := bodies(collect(da, 4, 100*time.Millisecond)), bodies(collect(db, 0, 50*time.Millisecond))
	check(ga == "s0,s1,s2,s3" && gb == "", "x-single-active-consumer: the first consumer gets all (%s / %q)", ga, gb)
	must(a.Cancel("sac1", false), "cancel sac1")
	publish(ch, "", qsac.Name, "s4")
	gb = bodies(collect(db, 1, 100*time.Millisecond))
	check(gb == "s4", "x-single-active-consumer: the second takes over after Cancel (%q)", gb)
	a.Close()
	b.Close()
	ch.QueueDelete(qsac.Name, false, false, false)

	// consumer priorities
	qcp, _ := ch.QueueDeclare(n("q.cprio"), false, false, false, false, nil)
	lo, hi := open(c), open(c)
	dlo, _ := lo.Consume(qcp.Name, "lo", true, false, false, false, amqp.Table{"x-priority": int32(0)})
	dhi, _ := hi.Consume(qcp.Name, "hi", true, false, false, false, amqp.Table{"x-priority": int32(10)})
	for i := 0; i < 5; i++ {
		publish(ch, "", qcp.Name, fmt.Sprint("cp", i))
	}
	gh, gl := bodies(collect(dhi, 5, 100*time.Millisecond)), bodies(collect(dlo, 0, 50*time.Millisecond))
	check(gh == "cp0,cp1,cp2,cp3,cp4" && gl == "", "consumer x-priority 10 gets everything before x-priority 0 (%s / %q)", gh, gl)
	lo.Close()
	hi.Close()
	ch.QueueDelete(qcp.Name, false, false, false)
	ch.Close()
}

var headersIn = amqp.Table{
	"int": int(42), "int8": int8(-8), "int16": int16(-1600), "int32": int32(-320000), "int64": int64(1) << 40,
	"uint8": byte(200), "float32": float32(1.5), "float64": float64(3.25), "bool": true, "false": false,
	"string": "héllo", "bytes": []byte{0, 1, 2, 255}, "time": time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC),
	"nested":   amqp.Table{"a": int32(1), "b": amqp.Table{"c": "deep"}, "arr": []interface{}{int32(1), "two"}},
	"array":    []interface{}{int32(1), "two", true, float64(4.5), []interface{}{int64(5)}, amqp.Table{"x": "y"}, nil, []byte("b")},
	"decimal":  amqp.Decimal{Scale: 2, Value: 12345},
	"nil":      nil,
	"empty":    "",
	"emptyarr": []interface{}{},
	"emptytab": amqp.Table{},
}

// What comes back: Go's int is sent as a signed 32-bit integer.
const headersOut = `{array:[int32(1) "two" bool(true) float64(4.5) [int64(5)] {x:"y"} nil bytes("b")] bool:bool(true) ` +
	`bytes:bytes("\x00\x01\x02\xff") decimal:amqp091.Decimal({2 12345}) empty:"" emptyarr:[] emptytab:{} ` +
	`false:bool(false) float32:float32(1.5) float64:float64(3.25) int:int32(42) int16:int16(-1600) ` +
	`int32:int32(-320000) int64:int64(1099511627776) int8:int8(-8) nested:{a:int32(1) arr:[int32(1) "two"] ` +
	`b:{c:"deep"}} nil:nil string:"héllo" time:time(2020-01-02T03:04:05Z) uint8:uint8(200)}`

func fullPublishing(body string) amqp.Publishing {
	return amqp.Publishing{
		Headers: headersIn, ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent,
		Priority: 7, CorrelationId: "corr-1", ReplyTo: "reply.q", Expiration: "600000", MessageId: "msg-1",
		Timestamp: time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC), Type: "go.type", UserId: "guest", AppId: "go-smoke",
		Body: []byte(body),
	}
}

func propsOf(p amqp.Publishing) string {
	return fmt.Sprintf("%q %q %d %d %q %q %q %q %s %q %q %q %s %q", p.ContentType, p.ContentEncoding, p.DeliveryMode,
		p.Priority, p.CorrelationId, p.ReplyTo, p.Expiration, p.MessageId, fv(p.Timestamp), p.Type, p.UserId, p.AppId,
		fv(p.Headers), p.Body)
}

func deliveryProps(d amqp.Delivery) string {
	return propsOf(amqp.Publishing{Headers: d.Headers, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: d.DeliveryMode, Priority: d.Priority, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
		Expiration: d.Expiration, MessageId: d.MessageId, Timestamp: d.Timestamp, Type: d.Type, UserId: d.UserId,
		AppId: d.AppId, Body: d.Body})
}

func publishing(c *amqp.Connection) {
	ch := open(c)
	q, _ := ch.QueueDeclare(n("q.pub"), false, false, false, false, nil)
	want := propsOf(fullPublishing("full"))
	want = strings.Replace(want, fv(headersIn), headersOut, 1)
	must(ch.Publish("", q.Name, false, false, fullPublishing("full")), "publish full")
	waitDepth(ch, q.Name, 1)
	d, got, err := ch.Get(q.Name, false)
	check(got && err == nil && deliveryProps(d) == want && d.Exchange == "" && d.RoutingKey == q.Name &&
		d.DeliveryTag == 1 && !d.Redelivered && d.MessageCount == 0,
		"Get: every Publishing field and headers of every Go type round-trip (got %s)", deliveryProps(d))
	must(d.Ack(false), "ack")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	must(ch.PublishWithContext(ctx, "", q.Name, false, false, amqp.Publishing{}), "PublishWithContext")
	cancel()
	waitDepth(ch, q.Name, 1)
	d, got, _ = ch.Get(q.Name, true)
	check(got && len(d.Body) == 0 && d.Headers == nil && d.ContentType == "" && d.DeliveryMode == 0,
		"PublishWithContext of an empty Publishing: empty body, no properties")
	must(ch.Publish("", q.Name, false, false, fullPublishing("full2")), "publish full2")
	dc, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	must(err, "consume")
	m, got := recv(dc, 3*time.Second)
	check(got && deliveryProps(m) == strings.Replace(want, `"full"`, `"full2"`, 1) && m.ConsumerTag != "",
		"Consume: every Publishing field and header type round-trip")
	must(m.Ack(false), "ack")
	must(ch.Cancel(m.ConsumerTag, false), "cancel")
	for _, size := range []int{131072 - 9, 131072 - 8, 131072, 5 << 20} {
		body := bytes.Repeat([]byte{'z'}, size)
		body[0], body[size-1] = 'A', 'Z'
		must(ch.Publish("", q.Name, false, false, amqp.Publishing{Body: body}), "publish big")
		waitDepth(ch, q.Name, 1)
		d, got, err := ch.Get(q.Name, true)
		check(got && err == nil && bytes.Equal(d.Body, body), "%d-byte body round-trips (frame_max 131072)", size)
	}
	cf := open(c)
	must(cf.Confirm(false), "confirm")
	confs := cf.NotifyPublish(make(chan amqp.Confirmation, 2))
	big := bytes.Repeat([]byte("0123456789abcdef"), (5<<20)/16)
	must(cf.Publish("", q.Name, false, false, amqp.Publishing{Body: big, DeliveryMode: amqp.Persistent}), "publish 5 MiB")
	cc := <-confs
	dd, _ := cf.Consume(q.Name, "big", true, false, false, false, nil)
	m, got = recv(dd, 5*time.Second)
	check(cc.Ack && got && bytes.Equal(m.Body, big), "5 MiB persistent message: confirmed, consumed intact")
	cf.Close()

	rc := open(c)
	rets := rc.NotifyReturn(make(chan amqp.Return, 4))
	must(rc.Publish("", n("q.nobody"), true, false, fullPublishing("ret")), "publish mandatory")
	select {
	case r := <-rets:
		p := amqp.Publishing{Headers: r.Headers, ContentType: r.ContentType, ContentEncoding: r.ContentEncoding,
			DeliveryMode: r.DeliveryMode, Priority: r.Priority, CorrelationId: r.CorrelationId, ReplyTo: r.ReplyTo,
			Expiration: r.Expiration, MessageId: r.MessageId, Timestamp: r.Timestamp, Type: r.Type, UserId: r.UserId,
			AppId: r.AppId, Body: r.Body}
		check(r.ReplyCode == 312 && r.ReplyText == "NO_ROUTE" && r.Exchange == "" && r.RoutingKey == n("q.nobody") &&
			propsOf(p) == strings.Replace(want, `"full"`, `"ret"`, 1),
			"NotifyReturn: mandatory unroutable -> 312 NO_ROUTE with all properties (got %d %q)", r.ReplyCode, r.ReplyText)
	case <-time.After(3 * time.Second):
		fail("NotifyReturn: no basic.return for a mandatory unroutable message")
	}
	must(rc.Publish("", q.Name, true, false, amqp.Publishing{Body: []byte("routed")}), "publish routed")
	select {
	case r := <-rets:
		fail("routable mandatory message returned: %d", r.ReplyCode)
	case <-time.After(100 * time.Millisecond):
	}
	waitDepth(ch, q.Name, 1)
	check(getAll(ch, q.Name) == "routed", "routable mandatory message is not returned")
	rc.Close()
	expectChannelError(c, "Publish with UserId other than the login", 406,
		"PRECONDITION_FAILED - user_id property set to 'other' but authenticated user was 'guest'",
		func(x *C) error {
			return x.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("x"), UserId: "other"})
		})
	ch.QueueDelete(q.Name, false, false, false)
	ch.Close()
}

func confirms(c *amqp.Connection) {
	ch := open(c)
	q, _ := ch.QueueDeclare(n("q.confirm"), false, false, false, false, nil)
	must(ch.Confirm(false), "confirm")
	must(ch.Confirm(false), "confirm again")
	confs := ch.NotifyPublish(make(chan amqp.Confirmation, 100))
	rets := ch.NotifyReturn(make(chan amqp.Return, 10))
	for i := 0; i < 10; i++ {
		publish(ch, "", q.Name, fmt.Sprint(i))
	}
	tags := []string{}
	for i := 0; i < 10; i++ {
		select {
		case cc := <-confs:
			tags = append(tags, fmt.Sprintf("%d:%v", cc.DeliveryTag, cc.Ack))
		case <-time.After(3 * time.Second):
			fail("confirm %d did not arrive", i+1)
		}
	}
	check(strings.Join(tags, " ") == "1:true 2:true 3:true 4:true 5:true 6:true 7:true 8:true 9:true 10:true",
		"Confirm (twice) + NotifyPublish: tags 1..10 acked in order")
	must(ch.Publish("", n("q.nobody"), true, false, amqp.Publishing{Body: []byte("ret")}), "publish")
	// amqp091-go hands frames to the listeners in arrival order, so once the ack is seen the return must be queued
	select {
	case cc := <-confs:
		returned := len(rets) == 1
		if returned {
			<-rets
		}
		check(returned && cc == amqp.Confirmation{DeliveryTag: 11, Ack: true},
			"mandatory unroutable under confirms: basic.return, then the ack (%+v, return first: %v)", cc, returned)
	case <-time.After(3 * time.Second):
		fail("no confirm for a mandatory unroutable message")
	}
	publish(ch, "", n("q.nobody"), "drop")
	cc := <-confs
	check(cc == amqp.Confirmation{DeliveryTag: 12, Ack: true}, "non-mandatory unroutable message is acked")
	dcs := []deferred{}
	for i := 0; i < 3; i++ {
		dcs = append(dcs, publishDeferred(ch, q.Name, "d"))
	}
	for i, dc := range dcs {
		cc := <-confs
		ack, missed := dc.wait()
		check(dc.DeliveryTag == uint64(13+i) && cc == amqp.Confirmation{DeliveryTag: uint64(13 + i), Ack: true} && (ack || missed),
			"PublishWithDeferredConfirm: tag %d acked; Wait() true%s", 13+i,
			map[bool]string{true: " (missed by the client: amqp091-go#182)", false: ""}[missed])
	}
	burst := open(c)
	must(burst.Confirm(false), "confirm")
	bc := burst.NotifyPublish(make(chan amqp.Confirmation, 600))
	for i := 0; i < 500; i++ {
		must(burst.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("burst")}), "publish")
	}
	acks := 0
	for i := 0; i < 500; i++ {
		select {
		case x := <-bc:
			if x.Ack && x.DeliveryTag == uint64(i+1) {
				acks++
			}
		case <-time.After(3 * time.Second):
			fail("burst: %d confirms", acks)
		}
	}
	check(acks == 500, "500 pipelined publishes: 500 acks in order")
	burst.Close()
	waitDepth(ch, q.Name, 513)
	ok("queue depth 513 after confirmed publishes")
	expectChannelError(c, "Tx on a confirm channel", 406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
		func(x *C) error { x.Confirm(false); return x.Tx() })
	ch.QueueDelete(q.Name, false, false, false)
	ch.Close()
}

func transactions(c *amqp.Connection) {
	ch := open(c)
	q, _ := ch.QueueDeclare(n("q.tx"), false, false, false, false, nil)
	must(ch.Tx(), "tx")
	must(ch.Tx(), "tx again")
	publish(ch, "", q.Name, "t1")
	publish(ch, "", q.Name, "t2")
	qi, _ := ch.QueueInspect(q.Name)
	check(qi.Messages == 0, "Tx: publishes invisible before commit")
	must(ch.TxRollback(), "rollback")
	qi, _ = ch.QueueInspect(q.Name)
	check(qi.Messages == 0, "TxRollback discards the publishes")
	publish(ch, "", q.Name, "t3")
	publish(ch, "", q.Name, "t4")
	must(ch.TxCommit(), "commit")
	qi, _ = ch.QueueInspect(q.Name)
	check(qi.Messages == 2, "TxCommit delivers them (depth %d)", qi.Messages)
	d, _, _ := ch.Get(q.Name, false)
	must(d.Ack(false), "ack")
	must(ch.TxRollback(), "rollback ack")
	d2, _, _ := ch.Get(q.Name, false)
	must(d2.Ack(false), "ack")
	must(ch.TxCommit(), "commit ack")
	ch.Close()
	time.Sleep(50 * time.Millisecond)
	ch = open(c)
	got := getAll(ch, q.Name)
	check(string(d.Body) == "t3" && string(d2.Body) == "t4" && got == "t3",
		"an ack rolled back stays unacked (requeued on channel close); a committed ack sticks (%s)", got)
	tc := open(c)
	rets := tc.NotifyReturn(make(chan amqp.Return, 1))
	must(tc.Tx(), "tx")
	must(tc.Publish("", n("q.nobody"), true, false, amqp.Publishing{Body: []byte("r")}), "publish")
	must(tc.TxCommit(), "commit")
	select {
	case r := <-rets:
		check(r.ReplyCode == 312, "mandatory unroutable in a transaction returned at commit")
	case <-time.After(3 * time.Second):
		fail("no return in a transaction")
	}
	tc.Close()
	expectChannelError(c, "TxCommit without Tx", 406, "PRECONDITION_FAILED - channel is not transactional",
		func(x *C) error { return x.TxCommit() })
	expectChannelError(c, "TxRollback without Tx", 406, "PRECONDITION_FAILED - channel is not transactional",
		func(x *C) error { return x.TxRollback() })
	expectChannelError(c, "Confirm on a transactional channel", 406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
		func(x *C) error { x.Tx(); return x.Confirm(false) })
	ch.QueueDelete(q.Name, false, false, false)
	ch.Close()
}

func consuming(c *amqp.Connection) {
	ch := open(c)
	q, _ := ch.QueueDeclare(n("q.consume"), false, false, false, false, nil)
	for i := 0; i < 6; i++ {
		publish(ch, "", q.Name, fmt.Sprint("c", i))
	}
	waitDepth(ch, q.Name, 6)
	d, got, err := ch.Get(q.Name, false)
	check(got && err == nil && string(d.Body) == "c0" && d.DeliveryTag == 1 && d.MessageCount == 5 && !d.Redelivered,
		"Get: tag 1, MessageCount 5")
	must(d.Nack(false, true), "nack")
	d, _, _ = ch.Get(q.Name, false)
	check(string(d.Body) == "c0" && d.DeliveryTag == 2 && d.Redelivered, "Nack(requeue) puts it back at the head, redelivered")
	must(d.Reject(true), "reject")

	cc := open(c)
	must(cc.Qos(3, 0, false), "qos")
	dc, err := cc.Consume(q.Name, "manual", false, false, false, false, nil)
	must(err, "consume")
	ms := collect(dc, 3, 150*time.Millisecond)
	check(bodies(ms) == "c0(r),c1,c2" && ms[0].DeliveryTag == 1 && ms[2].DeliveryTag == 3,
		"Qos 3: three deliveries, tags 1..3 (%s)", bodies(ms))
	must(cc.Ack(2, true), "ack multiple")
	ms2 := collect(dc, 2, 150*time.Millisecond)
	check(bodies(ms2) == "c3,c4", "Ack(2, multiple) frees two slots (%s)", bodies(ms2))
	must(cc.Nack(5, true, true), "nack multiple")
	ms3 := collect(dc, 3, 150*time.Millisecond)
	check(bodies(ms3) == "c2(r),c3(r),c4(r)", "Nack(5, multiple, requeue) redelivers in order (%s)", bodies(ms3))
	must(ms3[0].Reject(false), "reject")
	ms4 := collect(dc, 1, 150*time.Millisecond)
	check(bodies(ms4) == "c5", "Reject(no requeue) drops the message and frees a prefetch slot (%s)", bodies(ms4))
	must(cc.Recover(true), "recover")
	ms5 := collect(dc, 3, 150*time.Millisecond)
	check(bodies(ms5) == "c3(r),c4(r),c5(r)", "Recover(true) requeues every unacked delivery, in order (%s)", bodies(ms5))
	must(cc.Ack(ms5[2].DeliveryTag, true), "ack all")
	must(cc.Cancel("manual", false), "cancel")
	_, stillOpen := <-dc
	check(!stillOpen, "Cancel closes the deliveries channel")
	must(cc.Cancel("no-such-consumer", false), "cancel unknown")
	ok("Cancel of an unknown consumer tag -> cancel-ok")
	cc.Close()
	qi, _ := ch.QueueInspect(q.Name)
	check(qi.Messages == 0 && qi.Consumers == 0, "queue empty, no consumers")

	for i := 0; i < 3; i++ {
		publish(ch, "", q.Name, fmt.Sprint("e", i))
	}
	waitDepth(ch, q.Name, 3)
	expectChannelError(c, "Ack of an unknown delivery tag", 406, "PRECONDITION_FAILED - unknown delivery tag 99",
		func(x *C) error { return x.Ack(99, false) })
	expectChannelError(c, "double Ack", 406, "PRECONDITION_FAILED - unknown delivery tag 1",
		func(x *C) error { d, _, _ := x.Get(q.Name, false); d.Ack(false); return x.Ack(d.DeliveryTag, false) })
	expectChannelError(c, "Nack of an unknown delivery tag", 406, "PRECONDITION_FAILED - unknown delivery tag 7",
		func(x *C) error { return x.Nack(7, false, true) })
	expectChannelError(c, "Reject of an unknown delivery tag", 406, "PRECONDITION_FAILED - unknown delivery tag 7",
		func(x *C) error { return x.Reject(7, true) })
	expectChannelError(c, "Ack of an autoAck Get", 406, "PRECONDITION_FAILED - unknown delivery tag 1",
		func(x *C) error { d, _, _ := x.Get(q.Name, true); return x.Ack(d.DeliveryTag, false) })
	expectChannelError(c, "Consume from a missing queue", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.missing")),
		func(x *C) error { _, e := x.Consume(n("q.missing"), "", true, false, false, false, nil); return e })
	expectChannelError(c, "Get from a missing queue", 404,
		fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", n("q.missing")),
		func(x *C) error { _, _, e := x.Get(n("q.missing"), true); return e })
	ec := open(c)
	_, err = ec.Consume(q.Name, "excl", false, true, false, false, nil)
	must(err, "exclusive consume")
	inUse := fmt.Sprintf("ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use", q.Name)
	expectChannelError(c, "Consume on a queue with an exclusive consumer", 403, inUse,
		func(x *C) error { _, e := x.Consume(q.Name, "", true, false, false, false, nil); return e })
	ec.Close()
	nc := open(c)
	_, err = nc.Consume(q.Name, "plain", false, false, false, false, nil)
	must(err, "consume")
	expectChannelError(c, "exclusive Consume on a queue with a consumer", 403, inUse,
		func(x *C) error { _, e := x.Consume(q.Name, "", true, true, false, false, nil); return e })
	nc.Close()

	ac := open(c)
	ch.QueuePurge(q.Name, false)
	dc, err = ac.Consume(q.Name, "nowait", true, false, false, true, nil)
	must(err, "consume nowait")
	for i := 0; i < 3; i++ {
		publish(ch, "", q.Name, fmt.Sprint("a", i))
	}
	ms = collect(dc, 3, 100*time.Millisecond)
	check(bodies(ms) == "a0,a1,a2" && ms[0].ConsumerTag == "nowait", "Consume autoAck with noWait (%s)", bodies(ms))
	ac.Close()

	q2, _ := ch.QueueDeclare(n("q.deleted"), false, false, false, false, nil)
	kc := open(c)
	cancels := kc.NotifyCancel(make(chan string, 1))
	dk, _ := kc.Consume(q2.Name, "victim", false, false, false, false, nil)
	publish(ch, "", q2.Name, "before")
	m, _ := recv(dk, 3*time.Second)
	cnt, err := ch.QueueDelete(q2.Name, false, false, false)
	must(err, "delete consumed queue")
	select {
	case tag := <-cancels:
		check(tag == "victim" && cnt == 0, "NotifyCancel gets the tag when the queue is deleted (unacked message not counted)")
	case <-time.After(3 * time.Second):
		fail("NotifyCancel: no basic.cancel after the queue was deleted")
	}
	_, stillOpen = recv(dk, time.Second)
	check(!stillOpen, "the deliveries channel closes after the server's cancel")
	must(m.Ack(false), "ack")
	_, err = kc.QueueDeclare("", false, true, true, false, nil)
	check(err == nil, "the channel survives the server's cancel and an ack of a deleted queue's message (%s)", es(err))
	kc.Close()

	fc := open(c)
	check(fc.Flow(true) == nil, "Flow(true) -> flow-ok")
	fc.Close()
	ch.QueueDelete(q.Name, false, false, false)
	ch.Close()
}

func prefetch(c *amqp.Connection) {
	ch := open(c)
	qa, _ := ch.QueueDeclare(n("q.qa"), false, false, false, false, nil)
	qb, _ := ch.QueueDeclare(n("q.qb"), false, false, false, false, nil)
	for i := 0; i < 5; i++ {
		publish(ch, "", qa.Name, "a")
		publish(ch, "", qb.Name, "b")
	}
	waitDepth(ch, qa.Name, 5)
	waitDepth(ch, qb.Name, 5)
	qos := func(count int, global bool) func(x *C) {
		return func(x *C) { must(x.Qos(count, 0, global), "qos") }
	}
	none := func(x *C) {}
	for _, tc := range []struct {
		what          string
		before, after func(x *C) // Qos calls before the first and before the second Consume
		wa, wb        int
	}{
		{"Qos(2, global false): 2 per consumer", qos(2, false), none, 2, 2},
		{"Qos(3, global true): 3 shared by the channel's consumers", qos(3, true), none, 3, 0},
		{"Qos(4, global true) + Qos(1, global false): both limits apply", func(x *C) { qos(4, true)(x); qos(1, false)(x) }, none, 1, 1},
		{"Qos(0): unlimited", qos(0, false), none, 5, 5},
		{"Qos(1), Consume a, Qos(3), Consume b: each consumer keeps the limit it started with", qos(1, false), qos(3, false), 1, 3},
	} {
		x := open(c)
		tc.before(x)
		da, _ := x.Consume(qa.Name, "ca", false, false, false, false, nil)
		tc.after(x)
		db, _ := x.Consume(qb.Name, "cb", false, false, false, false, nil)
		na := len(collect(da, tc.wa, 150*time.Millisecond))
		nb := len(collect(db, tc.wb, 50*time.Millisecond))
		check(na == tc.wa && nb == tc.wb, "%s (a=%d b=%d)", tc.what, na, nb)
		x.Close()
		time.Sleep(50 * time.Millisecond)
	}
	ch.QueueDelete(qa.Name, false, false, false)
	ch.QueueDelete(qb.Name, false, false, false)
	ch.Close()
}

func channelErrors(c *amqp.Connection) {
	// what Go apps see for a channel error: the call's error and NotifyClose agree; Recover true; Server true
	ch := open(c)
	_, err := ch.QueueDeclarePassive(n("q.missing"), false, false, false, false, nil)
	e, isAmqp := err.(*amqp.Error)
	var nc *amqp.Error
	select {
	case nc = <-ch.closed:
	case <-time.After(3 * time.Second):
	}
	check(isAmqp && nc != nil && *e == *nc && e.Code == amqp.NotFound && e.Server && e.Recover && ch.IsClosed(),
		"a channel error is returned by the call and sent to NotifyClose alike (%s)", es(err))
	err = ch.Publish("", "x", false, false, amqp.Publishing{})
	check(err == amqp.ErrClosed, "Publish on the closed channel -> ErrClosed (%s)", es(err))
	check(ch.Close() == amqp.ErrClosed, "Close of the closed channel -> ErrClosed")
	ch2 := open(c)
	check(ch2.Close() == nil, "Channel.Close -> nil")
	select {
	case e, open := <-ch2.closed:
		check(!open && e == nil, "NotifyClose closed without an error after Channel.Close")
	case <-time.After(time.Second):
		fail("NotifyClose not closed after Channel.Close")
	}
}

func connectionErrors() {
	expectConnectionError("Qos with prefetch_size 1000", 540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)",
		func(x *C) error { return x.Qos(1, 1000, false) })
	expectConnectionError("Publish with immediate", 540, "NOT_IMPLEMENTED - immediate=true",
		func(x *C) error { return x.Publish("amq.direct", "x", false, true, amqp.Publishing{Body: []byte("x")}) })
	expectConnectionError("Recover(false)", 540, "NOT_IMPLEMENTED - requeue=false",
		func(x *C) error { return x.Recover(false) })
	expectConnectionError("Consume reusing a consumer tag on the channel", 530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
		func(x *C) error {
			q, _ := x.QueueDeclare("", false, true, true, false, nil)
			x.Consume(q.Name, "dup", true, false, false, false, nil)
			_, e := x.Consume(q.Name, "dup", true, false, false, false, nil)
			return e
		})
	expectConnectionError("ExchangeDeclare of an unknown kind", 503, "COMMAND_INVALID - unknown exchange type 'x-go-smoke-unknown'",
		func(x *C) error {
			return x.ExchangeDeclare(n("x.unknown"), "x-go-smoke-unknown", false, false, false, false, nil)
		})
}

func directReplyTo(c *amqp.Connection) {
	srv := open(c)
	q, _ := srv.QueueDeclare(n("q.rpc"), false, true, false, false, nil)
	sd, _ := srv.Consume(q.Name, "srv", true, false, false, false, nil)
	cli := open(c)
	rd, err := cli.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	must(err, "consume amq.rabbitmq.reply-to")
	must(cli.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("ping"), ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: "c1"}), "publish")
	req, got := recv(sd, 3*time.Second)
	check(got && strings.HasPrefix(req.ReplyTo, "amq.rabbitmq.reply-to.") && req.CorrelationId == "c1",
		"direct reply-to: the server sees ReplyTo amq.rabbitmq.reply-to.* (%s)", req.ReplyTo)
	must(srv.Publish("", req.ReplyTo, false, false, amqp.Publishing{Body: []byte("pong"), CorrelationId: "c1"}), "reply")
	rep, got := recv(rd, 3*time.Second)
	check(got && string(rep.Body) == "pong" && rep.CorrelationId == "c1" && rep.RoutingKey == req.ReplyTo && rep.Exchange == "",
		"direct reply-to: the reply arrives on the client's pseudo-queue consumer")
	expectChannelError(c, "Publish with ReplyTo amq.rabbitmq.reply-to without consuming it", 406,
		"PRECONDITION_FAILED - fast reply consumer does not exist",
		func(x *C) error {
			return x.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("x"), ReplyTo: "amq.rabbitmq.reply-to"})
		})
	expectChannelError(c, "Consume amq.rabbitmq.reply-to with manual acks", 406,
		"PRECONDITION_FAILED - reply consumer cannot acknowledge",
		func(x *C) error {
			_, e := x.Consume("amq.rabbitmq.reply-to", "", false, false, false, false, nil)
			return e
		})
	srv.Close()
	cli.Close()
}

func manyChannels(c *amqp.Connection) {
	chs := []*amqp.Channel{}
	for i := 0; i < 300; i++ {
		ch, err := c.Channel()
		must(err, fmt.Sprintf("channel %d", i))
		chs = append(chs, ch)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := []string{}
	for _, ch := range chs {
		wg.Add(1)
		go func(ch *amqp.Channel) {
			defer wg.Done()
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err == nil {
				err = ch.Publish("", q.Name, false, false, amqp.Publishing{Body: []byte("x")})
			}
			if err == nil {
				for i := 0; i < 100; i++ {
					var got bool
					if _, got, err = ch.Get(q.Name, true); got || err != nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			if err == nil {
				err = ch.Close()
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, es(err))
				mu.Unlock()
			}
		}(ch)
	}
	wg.Wait()
	check(len(errs) == 0, "300 channels open at once, used concurrently, closed (%v)", errs)
	for i := 0; i < 200; i++ {
		ch, err := c.Channel()
		must(err, "reopen")
		must(ch.Close(), "close")
	}
	ok("200 channel open/close cycles")
}

// details runs checks of details where Wharf was once seen to differ from RabbitMQ 3.10.8 (what NotifyClose
// reports after a graceful Connection.Close, 405 for an exclusive-flag mismatch, error texts, the cut of a long
// reply-text); RabbitMQ's behaviour is asserted.
func details() {
	// RabbitMQ answers the client's connection.close with close-ok and waits for the client to close the socket;
	// amqp091-go then reports a clean close (NotifyClose closed without an error).
	for i := 0; i < 20; i++ {
		c := dial()
		closed := c.NotifyClose(make(chan *amqp.Error, 1))
		must(c.Close(), "Close")
		if e := <-closed; e != nil {
			fail("graceful Connection.Close #%d: NotifyClose got %s, expected it closed without an error", i+1, es(e))
		}
	}
	ok("20 graceful Connection.Close: NotifyClose closed without an error every time")
	c := dial()
	ch := open(c)
	q, _ := ch.QueueDeclare(n("q.pexcl"), false, false, true, false, nil)
	expectChannelError(c, "same connection redeclares its exclusive queue as non-exclusive", 405,
		fmt.Sprintf("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.", q.Name),
		func(x *C) error { _, e := x.QueueDeclare(q.Name, false, false, false, false, nil); return e })
	plain, _ := ch.QueueDeclare(n("q.pplain"), false, false, false, false, nil)
	other := dial()
	expectChannelError(other, "another connection redeclares a non-exclusive queue as exclusive", 405,
		fmt.Sprintf("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.", plain.Name),
		func(x *C) error { _, e := x.QueueDeclare(plain.Name, false, false, true, false, nil); return e })
	other.Close()
	ch.QueueDelete(plain.Name, false, false, false)
	expectChannelError(c, "x-message-ttl given as a string", 406,
		fmt.Sprintf(`PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '%s' in vhost '/': "expected integer, got longstr"`, n("q.pending-bad")),
		func(x *C) error {
			_, e := x.QueueDeclare(n("q.pending-bad"), false, false, false, false, amqp.Table{"x-message-ttl": "1000"})
			return e
		})
	expectChannelError(c, "x-queue-type bogus", 406,
		fmt.Sprintf(`PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '%s' in vhost '/': "unsupported queue type 'bogus'"`, n("q.pending-bad")),
		func(x *C) error {
			_, e := x.QueueDeclare(n("q.pending-bad"), false, false, false, false, amqp.Table{"x-queue-type": "bogus"})
			return e
		})
	expectChannelError(c, "Publish with Expiration -1", 406, "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}",
		func(x *C) error {
			return x.Publish("amq.direct", "x", false, false, amqp.Publishing{Body: []byte("x"), Expiration: "-1"})
		})
	long := strings.Repeat("n", 250)
	expectChannelError(c, "a reply-text over 255 bytes is cut to 252 and '...'", 404,
		"NOT_FOUND - no queue '"+long[:230]+"...",
		func(x *C) error { _, e := x.QueueDeclarePassive(long, false, false, false, false, nil); return e })
	_, err := ch.QueueDeclare(n("q.pending-ttl"), false, false, false, false, amqp.Table{"x-message-ttl": int32(60000)})
	must(err, "declare")
	expectChannelError(c, "redeclare without the x-message-ttl argument", 406,
		fmt.Sprintf("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': received none but current is the value '60000' of type 'signedint'", n("q.pending-ttl")),
		func(x *C) error {
			_, e := x.QueueDeclare(n("q.pending-ttl"), false, false, false, false, nil)
			return e
		})
	ch.QueueDelete(n("q.pending-ttl"), false, false, false)
	ch.QueueDelete(q.Name, false, false, false)
	c.Close()
}
