"""Where alerts go. Each sink receives every alert the manager emits.

Sinks:

* :class:`LoggingSink` - Python :mod:`logging` (logger ``trainwatch``).
* :class:`ConsoleSink` - one line per alert through the progress bar's ``write``.
* :class:`OutputTextSink` - Markdown text (TensorBoard text) through a trainwatch Output.
* :class:`JsonlSink` - a JSON-lines file, one object per alert, flushed per alert.
* :class:`CallableSink` - any ``fn(alert)``.
* :class:`WebhookSink` - JSON POST from a background thread; never slows training.

A sink's ``emit`` may raise: :class:`~trainwatch.alerts.manager.AlertManager` then reports
it once (``alerts.sink_error``) and disables it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from trainwatch.alerts.alert import Alert, Severity

if TYPE_CHECKING:
    from trainwatch.outputs.base import Output

logger = logging.getLogger("trainwatch")


class AlertSink(ABC):
    """Receives alert events. ``emit`` must be quick: slow work belongs on a thread."""

    @abstractmethod
    def emit(self, alert: Alert) -> None:
        """Deliver one alert."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Flush and release resources (called once at the end of training)."""

    def failure(self) -> str | None:
        """A failure found outside :meth:`emit` (a delivery on a background thread), once:
        the :class:`~trainwatch.alerts.AlertManager` reports it as ``alerts.sink_error``;
        None when there is none."""
        return None


_LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.CRITICAL,
}


class LoggingSink(AlertSink):
    """Logs each alert as ``str(alert)`` to a :mod:`logging` logger.

    Level by severity: info -> INFO, warning -> WARNING, critical -> CRITICAL; a
    resolution (``alert.resolved``) is always INFO. The record carries the alert's dict as
    ``record.trainwatch_alert`` for handlers that want structure.

    Args:
        logger_name: name of the logger (default ``"trainwatch"``).
    """

    def __init__(self, logger_name: str = "trainwatch"):
        if not isinstance(logger_name, str):
            raise TypeError(f"logger_name: must be a str, got {logger_name!r}")
        self.logger = logging.getLogger(logger_name)

    def emit(self, alert: Alert) -> None:
        level = logging.INFO if alert.resolved else _LEVELS[alert.severity]
        self.logger.log(level, "%s", alert, extra={"trainwatch_alert": alert.to_dict()})

    def __repr__(self) -> str:
        return f"LoggingSink({self.logger.name!r})"


def _tqdm_write(line: str) -> None:
    """``tqdm.write`` to stderr (at call time, so redirection works); plain print if tqdm
    is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=sys.stderr, flush=True)
        return
    tqdm.write(line, file=sys.stderr)


class ConsoleSink(AlertSink):
    """Writes one line per alert (``str(alert)``) through a progress-bar-aware writer.

    Args:
        write: a callable taking one line without its newline, e.g. the progress bar's
            ``write`` (``tqdm.write``), so the bar is redrawn below the line instead of
            being broken by it. Default: ``tqdm.write`` to stderr.
    """

    def __init__(self, write: Callable[[str], Any] | None = None):
        if write is not None and not callable(write):
            raise TypeError(f"write: must be callable, got {write!r}")
        self.write: Callable[[str], Any] = write if write is not None else _tqdm_write

    def emit(self, alert: Alert) -> None:
        self.write(str(alert))


def alert_markdown(alert: Alert) -> str:
    """The alert as a short Markdown paragraph (used by :class:`OutputTextSink`)."""
    status = "RESOLVED " if alert.resolved else ""
    parts = [f"**{status}{alert.severity.value.upper()}** `{alert.code}`"]
    if alert.tensor:
        parts.append(f" on `{alert.tensor}`")
    parts.append(f" at step {alert.step}: {alert.message}")
    lines = ["".join(parts)]
    if alert.value is not None:
        lines.append(f"value: `{alert.value:.6g}`")
    if alert.suggestion and not alert.resolved:
        lines.append(f"*Suggestion:* {alert.suggestion}")
    return "\n\n".join(lines)


class OutputTextSink(AlertSink):
    """Writes each alert as Markdown text to a trainwatch :class:`~trainwatch.outputs.base.Output`.

    The text goes under tag ``alerts/<code>`` at the alert's step, and a running count of
    alerts fired so far (resolutions not counted) under scalar ``alerts/count`` at the same
    step, so TensorBoard shows when alerts happened.

    Args:
        output: where to write (a TensorBoard output, an ``OutputList``, ...).
    """

    def __init__(self, output: Output):
        from trainwatch.outputs.base import Output

        if not isinstance(output, Output):
            raise TypeError(f"output: {output!r} is not a trainwatch Output")
        self.output = output
        self.count = 0

    def emit(self, alert: Alert) -> None:
        if not alert.resolved:
            self.count += 1
        self.output.text(f"alerts/{alert.code}", alert_markdown(alert), alert.step)
        self.output.scalars({"alerts/count": float(self.count)}, alert.step)


class JsonlSink(AlertSink):
    """Appends one JSON object per alert (``alert.to_dict()``) to a JSON-lines file.

    The file is opened for appending at construction (its parent directories are created)
    and flushed after every alert, so the alerts survive a crash. Thread-safe. Emitting
    after :meth:`close` reopens the file.

    Args:
        path: the file, e.g. ``<logdir>/alerts.jsonl``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"path: must be a str or path-like, got {path!r}") from None
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = self._open()

    def _open(self):
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def emit(self, alert: Alert) -> None:
        line = json.dumps(alert.to_dict(), default=str)
        with self._lock:
            if self._fh is None:
                self._fh = self._open()
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Flush and close the file. Idempotent."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"


class CallableSink(AlertSink):
    """Calls ``fn(alert)`` for each alert (keep it quick: it runs in the training loop).

    Args:
        fn: any callable taking one :class:`~trainwatch.alerts.alert.Alert`.
    """

    def __init__(self, fn: Callable[[Alert], Any]):
        if not callable(fn):
            raise TypeError(f"fn: must be callable, got {fn!r}")
        self.fn = fn

    def emit(self, alert: Alert) -> None:
        self.fn(alert)


_STOP = object()


class WebhookSink(AlertSink):
    """POSTs each alert as JSON to an HTTP(S) endpoint, from one background daemon thread.

    ``emit`` never blocks: it puts the alert on a bounded queue and returns; when the queue
    is full the alert is dropped and counted. The thread posts ``alert.to_dict()`` (or
    ``payload(alert)``) with ``Content-Type: application/json``, waiting at most
    ``timeout`` seconds per socket operation, and retries connection errors, timeouts,
    HTTP 408/429 and 5xx up to ``retries`` times, sleeping ``backoff * 2**attempt`` seconds
    in between; other 4xx answers are not retried. :meth:`close` waits at most its
    ``timeout`` for the queue to drain and then gives up, so a dead or hanging endpoint
    never slows or stops training. The first failure is logged as a warning on logger
    ``trainwatch`` and reported once through the alerts (``alerts.sink_error``, at the next
    alert or when training ends), later ones at debug level.

    Proxies come from the usual environment variables (``https_proxy``, ``no_proxy``, ...),
    read at construction.

    Counters (read them after :meth:`close` or :meth:`flush` for exact values):
        delivered: alerts the endpoint accepted (2xx).
        failed: alerts given up on after all attempts (or interrupted by close).
        dropped: alerts never attempted: the queue was full, the sink was closed, or
            close gave up before their turn.
        skipped: alerts below ``min_severity`` (not sent, not an error).

    Args:
        url: ``http://`` or ``https://`` endpoint.
        timeout: seconds per connect/read on the socket (default 2.0); > 0.
        retries: extra attempts after the first (default 2); >= 0.
        backoff: base delay in seconds before a retry, doubled each time (default 0.5).
        max_queue: alerts waiting to be sent before new ones are dropped (default 1000).
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        min_severity: alerts below this are not sent (default ``"warning"``). A resolution
            carries the severity of the episode it closes.
        payload: turns an alert into the JSON body (default ``alert.to_dict()``); e.g.
            ``lambda a: {"text": str(a)}`` for a Slack incoming webhook.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_queue: int = 1000,
        headers: Mapping[str, str] | None = None,
        min_severity: Severity | str = Severity.WARNING,
        payload: Callable[[Alert], Any] | None = None,
    ):
        if not isinstance(url, str):
            raise ValueError(f"url: must be an http(s) URL string, got {url!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: {url!r} is not an http:// or https:// URL with a host")
        if not _is_number(timeout) or not timeout > 0:
            raise ValueError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
        if not _is_int(retries) or retries < 0:
            raise ValueError(f"retries: must be an integer >= 0, got {retries!r}")
        if not _is_number(backoff) or not backoff >= 0:
            raise ValueError(f"backoff: must be a number of seconds >= 0, got {backoff!r}")
        if not _is_int(max_queue) or max_queue < 1:
            raise ValueError(f"max_queue: must be an integer >= 1, got {max_queue!r}")
        if headers is not None and not isinstance(headers, Mapping):
            raise ValueError(f"headers: must be a mapping of str to str, got {headers!r}")
        if payload is not None and not callable(payload):
            raise ValueError(f"payload: must be callable, got {payload!r}")
        self.url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_queue = int(max_queue)
        self.min_severity = Severity.parse(min_severity, argument="min_severity")
        self.headers = {"Content-Type": "application/json", "User-Agent": "trainwatch"}
        self.headers.update({str(k): str(v) for k, v in (headers or {}).items()})
        self.payload = payload
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.skipped = 0
        self._opener = urllib.request.build_opener()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.max_queue)
        self._cv = threading.Condition()
        self._pending = 0  # queued + in flight
        self._closed = False
        self._abandon = threading.Event()
        self._warned = False
        self._failure: str | None = None  # the first failure, until failure() takes it
        self._thread = threading.Thread(
            target=self._run, name="trainwatch-webhook", daemon=True
        )
        self._thread.start()

    # -- training-loop side ----------------------------------------------------------------

    def emit(self, alert: Alert) -> None:
        """Queue ``alert`` for sending; never blocks (drops and counts when full/closed)."""
        if alert.severity.rank < self.min_severity.rank:
            self.skipped += 1
            return
        with self._cv:
            if self._closed:
                self.dropped += 1
                return
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self.dropped += 1
                return
            self._pending += 1

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait at most ``timeout`` seconds until every queued alert has been handled.

        Returns True if the queue drained, False if it gave up.
        """
        if not _is_number(timeout) or not timeout >= 0:
            raise ValueError(f"timeout: must be a number of seconds >= 0, got {timeout!r}")
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 2.0) -> bool:
        """Stop accepting alerts and wait at most ``timeout`` seconds for the queue to drain.

        If it does not drain in time, the background thread abandons what is left (counted
        as ``dropped``; the request in flight is not retried, ends by the sink's socket
        ``timeout`` and counts as ``failed``) and this returns anyway. Idempotent; emits
        after close are dropped.

        Returns True if everything queued was handled, False if it gave up.
        """
        if not _is_number(timeout) or not timeout >= 0:
            raise ValueError(f"timeout: must be a number of seconds >= 0, got {timeout!r}")
        with self._cv:
            self._closed = True
            drained = self._cv.wait_for(lambda: self._pending == 0, timeout=timeout)
            if not drained:
                self._abandon.set()
            # Wake the thread if it is idle. If the queue is full the thread is busy and
            # sees _abandon after the request in flight.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
        if drained:
            self._thread.join(timeout=0.1)
        return drained

    # -- background thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._abandon.is_set():
                self._drop_rest(item)
                return
            try:
                ok = self._deliver(item)
            except Exception as exc:  # noqa: BLE001 - e.g. payload() raised; keep going
                ok = False
                self._report(item, exc)
            with self._cv:
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1
                self._pending -= 1
                self._cv.notify_all()

    def _drop_rest(self, item: Any) -> None:
        """After close gave up: count ``item`` and everything still queued as dropped."""
        with self._cv:
            while True:
                if item is not _STOP:
                    self.dropped += 1
                    self._pending -= 1
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._cv.notify_all()

    def _deliver(self, alert: Alert) -> bool:
        body = self.payload(alert) if self.payload is not None else alert.to_dict()
        data = json.dumps(body, default=str).encode("utf-8")
        error: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt and self._abandon.wait(self.backoff * 2 ** (attempt - 1)):
                break  # close gave up: no more retries
            request = urllib.request.Request(self.url, data=data, headers=self.headers,
                                             method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read(65536)
                return True
            except urllib.error.HTTPError as exc:
                error = exc
                exc.close()
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the request itself is wrong: retrying will not help
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused, reset, ...
                error = exc
        self._report(alert, error)
        return False

    def _report(self, alert: Alert, error: BaseException | None) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        if not self._warned:  # (for the alerts, on the training thread: see failure())
            self._failure = (f"webhook {self.url} failed for alert {alert.code}: {error!r}; it "
                             "keeps trying the next alerts (later failures are logged at "
                             "debug level on logger 'trainwatch')")
        self._warned = True
        logger.log(level, "trainwatch: webhook %s failed for alert %s: %r (further "
                   "failures are logged at debug level)", self.url, alert.code, error)

    def failure(self) -> str | None:
        failure, self._failure = self._failure, None
        return failure

    def __repr__(self) -> str:
        return (f"WebhookSink({self.url!r}, delivered={self.delivered}, "
                f"failed={self.failed}, dropped={self.dropped})")


def _is_number(x: Any) -> bool:
    """A finite real number (bool excluded)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
