"""WebhookSink against real HTTP servers on 127.0.0.1: delivery, retries, a dead port and a
hanging server, and a simulated training loop that must not be slowed down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from trainwatch.alerts import Alert, AlertManager, Severity, WebhookSink


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Talk to 127.0.0.1 directly whatever the environment's proxy settings."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


class Endpoint:
    """A real ThreadingHTTPServer that records POSTs.

    ``statuses``: HTTP statuses to answer, in order (then 200). ``hang``: seconds each
    handler waits before answering (cut short at teardown).
    """

    def __init__(self, statuses: list[int] | None = None, hang: float = 0.0):
        self.statuses = list(statuses or [])
        self.hang = hang
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    endpoint.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body})
                    status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                if endpoint.hang:
                    endpoint.release.wait(endpoint.hang)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # the client gave up on a hanging request: expected, stay quiet

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def bodies(self) -> list[Any]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)


@pytest.fixture
def endpoint() -> Iterator[Any]:
    made: list[Endpoint] = []

    def make(**kwargs: Any) -> Endpoint:
        made.append(Endpoint(**kwargs))
        return made[-1]

    yield make
    for ep in made:
        ep.stop()


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nothing listens on (connection refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"


def make(step: int = 0, severity: Severity = Severity.WARNING, **kw: Any) -> Alert:
    fields = {"tensor": "fc1.weight", "value": 0.02, "suggestion": "lower the lr", **kw}
    return Alert(fields.pop("code", "update_ratio.high"), severity,
                 "ratio 2.0e-02 above 1e-2", step, **fields)


def timed_emits(sink: WebhookSink, n: int, budget: float = 0.1) -> float:
    """Seconds taken by ``n`` emits; stops early (failing fast) once over ``budget``."""
    t0 = time.perf_counter()
    for i in range(n):
        sink.emit(make(step=i))
        if time.perf_counter() - t0 > budget:
            break
    return time.perf_counter() - t0


def test_delivers_json_posts(endpoint):
    ep = endpoint()
    sink = WebhookSink(ep.url + "/hooks/tw?x=1", headers={"Authorization": "Bearer t0k"})
    alerts = [make(1), make(2, Severity.CRITICAL, code="loss.nan"),
              make(3, resolved=True), make(4, value=float("inf"))]
    info = make(5, Severity.INFO, code="lr.changed")
    for a in alerts + [info]:
        sink.emit(a)
    assert sink.close(timeout=5.0) is True
    assert (sink.delivered, sink.failed, sink.dropped, sink.skipped) == (4, 0, 0, 1)
    assert ep.bodies == [a.to_dict() for a in alerts]  # in order; the info one not sent
    assert ep.bodies[3]["value"] == "inf"
    req = ep.requests[0]
    assert req["path"] == "/hooks/tw?x=1"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["Authorization"] == "Bearer t0k"


def test_min_severity_and_custom_payload(endpoint):
    ep = endpoint()
    sink = WebhookSink(ep.url, min_severity="critical", payload=lambda a: {"text": str(a)})
    sink.emit(make(1))
    sink.emit(crit := make(2, Severity.CRITICAL))
    assert sink.close(timeout=5.0)
    assert ep.bodies == [{"text": str(crit)}]
    assert sink.skipped == 1 and sink.delivered == 1


def test_retries_server_errors_but_not_client_errors(endpoint):
    ep = endpoint(statuses=[500, 503, 200, 400])
    sink = WebhookSink(ep.url, retries=2, backoff=0.01)
    sink.emit(make(1))  # 500, 503, then 200: delivered on the third attempt
    assert sink.flush(timeout=5.0)
    assert (sink.delivered, sink.failed) == (1, 0) and len(ep.requests) == 3
    sink.emit(make(2))  # 400: the request is wrong, no retry
    assert sink.close(timeout=5.0)
    assert (sink.delivered, sink.failed) == (1, 1) and len(ep.requests) == 4


def test_gives_up_after_retries(endpoint):
    ep = endpoint(statuses=[500] * 10)
    sink = WebhookSink(ep.url, retries=1, backoff=0.01)
    sink.emit(make(1))
    assert sink.close(timeout=5.0)
    assert (sink.delivered, sink.failed) == (0, 1) and len(ep.requests) == 2


def test_dead_port_never_blocks_and_counts_failures(dead_url, caplog):
    sink = WebhookSink(dead_url, timeout=0.5, retries=1, backoff=0.001)
    assert timed_emits(sink, 100) < 0.1
    assert sink.close(timeout=5.0)  # refused connections fail fast
    assert (sink.delivered, sink.failed, sink.dropped) == (0, 100, 0)
    # one warning, the rest at debug level
    warnings = [r for r in caplog.records
                if r.levelname == "WARNING" and dead_url in r.getMessage()]
    assert len(warnings) == 1


def test_dead_port_with_slow_backoff_close_returns_within_its_timeout(dead_url):
    sink = WebhookSink(dead_url, timeout=0.5, retries=2, backoff=0.5)
    assert timed_emits(sink, 100) < 0.1
    t0 = time.perf_counter()
    assert sink.close(timeout=0.3) is False  # gave up: 100 x 1.5 s of backoff left
    assert time.perf_counter() - t0 < 0.6
    assert sink.flush(timeout=2.0)  # the thread stopped retrying and dropped the rest
    assert sink.delivered == 0 and sink.failed >= 1
    assert sink.failed + sink.dropped == 100
    sink.emit(make(101))  # after close: dropped, never blocks
    assert sink.dropped == 100 - sink.failed + 1


def test_hanging_server_never_blocks_and_close_is_bounded(endpoint):
    ep = endpoint(hang=10.0)
    sink = WebhookSink(ep.url, timeout=0.3, retries=0)
    assert timed_emits(sink, 20) < 0.1
    t0 = time.perf_counter()
    assert sink.close(timeout=0.5) is False
    assert time.perf_counter() - t0 < 0.8
    assert len(ep.requests) >= 1  # it did reach the server
    assert sink.flush(timeout=2.0)  # the request in flight times out (0.3 s), rest dropped
    assert sink.delivered == 0 and sink.failed >= 1
    assert sink.failed + sink.dropped == 20


def test_full_queue_drops_instead_of_blocking(endpoint):
    ep = endpoint(hang=10.0)
    sink = WebhookSink(ep.url, timeout=0.3, retries=0, max_queue=5)
    assert timed_emits(sink, 50) < 0.1
    assert sink.dropped >= 50 - 5 - 1  # at most 5 queued and 1 in flight
    sink.close(timeout=0.0)


def train(manager: AlertManager, steps: int = 200, budget: float = 30.0) -> float:
    """A small numpy 'training loop' (linear regression, SGD) that raises an alert at every
    step; returns its wall time in seconds (stops early once over ``budget`` seconds)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64))
    y = x @ rng.normal(size=(64, 1))
    w = np.zeros((64, 1))
    t0 = time.perf_counter()
    for step in range(steps):
        grad = x.T @ (x @ w - y) / len(x)
        w -= 0.01 * grad
        manager.fire(f"test.step{step}", "warning", f"grad norm {np.linalg.norm(grad):.3g}",
                     step)
        if time.perf_counter() - t0 > budget:
            break
    return time.perf_counter() - t0


@pytest.mark.parametrize("kind", ["dead_port", "hanging_server"])
def test_training_loop_is_not_slowed_by_a_bad_endpoint(kind, dead_url, endpoint):
    url = dead_url if kind == "dead_port" else endpoint(hang=10.0).url
    train(AlertManager())  # warm-up
    baseline = min(train(AlertManager()) for _ in range(2))
    sink = WebhookSink(url, timeout=0.5, retries=2, backoff=0.5)
    manager = AlertManager([sink])
    watched = train(manager, budget=baseline + 0.5)
    t0 = time.perf_counter()
    if kind == "dead_port":
        manager.close()  # the sink's default close timeout: 2 s at most
        bound = 2.0
    else:
        sink.close(timeout=0.5)
        bound = 0.5
    closing = time.perf_counter() - t0
    assert watched - baseline < 0.2, (watched, baseline)
    assert closing < bound + 0.3
    assert sink.delivered == 0
    reported = [a for a in manager.history if a.code == "alerts.sink_error"]
    assert len(manager.history) - len(reported) == 200 and len(reported) <= 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "example.com/hook"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": None}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"max_queue": 0}, "max_queue"),
        ({"headers": ["x"]}, "headers"),
        ({"min_severity": "urgent"}, "min_severity"),
        ({"payload": "text"}, "payload"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    kwargs = {"url": "http://127.0.0.1:9/hook", **kwargs}
    with pytest.raises(ValueError, match=name):
        WebhookSink(**kwargs)


def test_close_rejects_bad_timeout_and_is_idempotent(endpoint):
    sink = WebhookSink(endpoint().url)
    with pytest.raises(ValueError, match="timeout"):
        sink.close(timeout=-1)
    assert sink.close() and sink.close()


def test_a_dead_webhook_is_reported_once_through_the_other_sinks(dead_url):
    """A webhook's failures happen on its own thread: they were only logged, on a logger
    that shows nothing unless configured. The first is now an alerts.sink_error, once,
    that the other sinks receive (at the next alert, or when the manager closes)."""
    from trainwatch.alerts import CallableSink

    seen: list[Alert] = []
    hook = WebhookSink(dead_url, timeout=0.5, retries=0)
    manager = AlertManager(sinks=[hook, CallableSink(seen.append)])
    manager.fire("update_ratio.high", "warning", "ratio 2.0e-02 above 1e-2", 3)
    manager.fire("loss.divergence", "warning", "the loss rose", 4)
    manager.close()
    errors = [a for a in seen if a.code == "alerts.sink_error"]
    assert len(errors) == 1 and dead_url in errors[0].message, [str(a) for a in seen]
    assert hook.delivered == 0 and hook.failed >= 1
