"""Celery (with kombu and py-amqp underneath, the most common way Python applications use RabbitMQ) against
a broker: a worker process and a client on their own connections, results over the `rpc://` backend (a reply
queue per client). Checks: a task's result, a group of 20, a chain, a task that retries itself, an exception
carried back with its type, countdown tasks (held unacknowledged by the worker, which raises its prefetch with
basic.qos), priority and expiry options, remote control (ping and inspect go through the pidbox fanout exchange
and a reply exchange), late acknowledgement across a worker killed with SIGKILL mid-task (the tasks run again on
a new worker), purge, and a warm shutdown.

Usage: celery_smoke.py HOST:PORT. Exits non-zero on the first failure. The same file is the worker's app
module (`celery -A celery_smoke worker`); the broker URL comes from CELERY_SMOKE_BROKER then.
"""

import os
import signal
import subprocess
import sys
import time

from celery import Celery, chain, group

BROKER = os.environ.get("CELERY_SMOKE_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = "celery-smoke"

app = Celery("celery_smoke", broker=BROKER, backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=60,
)


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry()
    return self.request.retries


@app.task
def boom():
    raise ValueError("boom")


@app.task(bind=True)
def slow(self, x):
    # Long enough that the worker killed while running it cannot have finished it first.
    time.sleep(4)
    return [x, self.request.hostname]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def start_worker(name):
    """A worker in a process of its own (threads pool: no fork inside the test), on this file as its app."""
    env = dict(os.environ, CELERY_SMOKE_BROKER=BROKER)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_smoke", "worker", "-P", "threads", "-c", "4",
         "-n", f"{name}@smoke", "-l", "warning", "--without-gossip", "--without-mingle"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
        env=env,
    )


def wait_for_worker(name, deadline_s=30):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        replies = app.control.ping(timeout=0.5)
        if any(f"{name}@smoke" in reply for reply in replies):
            return replies
    raise SystemExit(f"FAILED: worker {name} did not answer ping within {deadline_s} s")


def main():
    global BROKER
    BROKER = f"amqp://guest:guest@{sys.argv[1]}//"
    app.conf.broker_url = BROKER
    worker = start_worker("one")
    try:
        run_checks(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    print("celery smoke test: all checks passed")


def run_checks(worker):
    replies = wait_for_worker("one")
    check(replies == [{"one@smoke": {"ok": "pong"}}], f"ping replies {replies}")

    check(add.delay(2, 3).get(timeout=10) == 5, "add")
    check(group(add.s(i, i) for i in range(20))().get(timeout=20) == [2 * i for i in range(20)], "group")
    check(chain(add.s(1, 1), add.s(10))().get(timeout=10) == 12, "chain")
    check(flaky.delay(2).get(timeout=10) == 2, "a task retried twice")
    try:
        boom.delay().get(timeout=10)
        check(False, "the exception did not come back")
    except ValueError as e:
        check(str(e) == "boom", f"exception text {e}")

    # Countdown tasks wait in the worker, unacknowledged, while it raises its prefetch to keep taking work.
    started = time.time()
    later = [add.apply_async((i, 1), countdown=1) for i in range(5)]
    check([r.get(timeout=10) for r in later] == [1, 2, 3, 4, 5], "countdown results")
    check(time.time() - started >= 0.9, "countdown tasks ran early")
    check(add.apply_async((1, 2), expires=30, priority=5).get(timeout=10) == 3, "expires + priority")

    queues = app.control.inspect(timeout=2).active_queues() or {}
    names = sorted(q["name"] for qs in queues.values() for q in qs)
    check(names == [QUEUE], f"active queues {names}")

    # Late acks: a worker killed mid-task leaves its tasks unacknowledged; a new worker runs them again.
    running = [slow.delay(i) for i in range(4)]
    deadline = time.time() + 10
    while time.time() < deadline:
        active = app.control.inspect(timeout=1).active() or {}
        if sum(len(tasks) for tasks in active.values()) == 4:
            break
    else:
        check(False, "the four slow tasks did not start")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    worker2 = start_worker("two")
    try:
        results = sorted(r.get(timeout=30) for r in running)
        check(results == [[i, "two@smoke"] for i in range(4)], f"slow tasks after the kill: {results}")
        # Started in full (its signal handlers too) before it is asked to stop.
        wait_for_worker("two")

        # Purge: tasks published while no worker listens are removed by `celery purge`'s queue.purge.
        worker2.send_signal(signal.SIGTERM)
        code = worker2.wait(timeout=30)
        check(code == 0, f"warm shutdown exit code {code}")
        with app.connection_for_write() as conn:
            # Every task was acknowledged before the worker closed its connection: nothing went back.
            left = conn.default_channel.queue_declare(QUEUE, passive=True).message_count
            check(left == 0, f"{left} tasks back in the queue after a warm shutdown")
        for i in range(7):
            add.delay(i, i)
        with app.connection_for_write() as conn:
            deadline = time.time() + 10
            while conn.default_channel.queue_declare(QUEUE, passive=True).message_count < 7:
                check(time.time() < deadline, "the seven tasks did not reach the queue")
                time.sleep(0.05)
        purged = app.control.purge()
        check(purged == 7, f"purged {purged}")
    finally:
        if worker2.poll() is None:
            worker2.kill()


if __name__ == "__main__":
    main()
