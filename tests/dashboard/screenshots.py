"""Serve a logdir with the real TensorBoard and screenshot its dashboards in headless Chromium.

Used by the dashboard tests (``tests/dashboard/``) and by ``docs/make_screenshots.py``, which
regenerates the README images::

    python docs/make_screenshots.py --out docs/screenshots
    python -m tests.dashboard.screenshots --out docs/screenshots     # the same

The browser is Debian's ``chromium`` driven by pip ``playwright`` (``executable_path``), never
a browser downloaded by ``playwright install``. Everything runs on 127.0.0.1, offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Chromium flags for a headless, offline, sandbox-less (container) run
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--no-proxy-server",
)
#: browser viewport of the screenshots, in CSS pixels
VIEWPORT = {"width": 1400, "height": 900}
#: HTTP without any proxy from the environment: the server is on 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: longest wait for TensorBoard to answer after start, in seconds
SERVER_START_TIMEOUT_S = 60.0


def chromium_path() -> str | None:
    """Path of Debian's ``chromium`` (what ``.ci/run`` installs), or None."""
    return shutil.which("chromium")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardServer:
    """The ``tensorboard`` server as a child process on 127.0.0.1, loading ``logdir`` once.

    ``--reload_interval 0`` makes it load the (finished) logdir once at start-up;
    ``--samples_per_plugin images=100`` keeps every image (the default keeps 10 per tag).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, logdir: str | os.PathLike, *, port: int | None = None,
                 extra_args: Sequence[str] = (), cwd: str | os.PathLike | None = None):
        self.logdir = os.fspath(logdir)
        self.cwd = cwd  # a relative logdir is relative to this (the page shows it as given)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "tensorboard.main", "--logdir", self.logdir,
            "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "0",
            "--samples_per_plugin", "images=100", *extra_args,
        ]
        self.process: subprocess.Popen | None = None
        self._log: Any = None
        self._final_output = ""

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> str:
        """Start the server and wait until it serves every run of the logdir with stable tags;
        returns the base URL. Raises RuntimeError (with the server's output) on failure."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.cwd)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self, timeout: float) -> None:
        expected = set(event_runs(os.path.join(self.cwd or os.curdir, self.logdir)))
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.process.returncode}:\n"
                                   f"{self.output()}")
            try:
                runs = set(self.json("/data/runs"))
                # the data is loaded once, in the background: wait for every run, then until
                # two looks at every plugin's tags agree
                if expected <= runs:
                    now = [self.json(f"/data/plugin/{p}/tags")
                           for p in ("scalars", "histograms", "images", "text")]
                    if now == last:
                        return
                    last = now
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tensorboard did not serve runs {sorted(expected)} within "
                           f"{timeout:.0f} s:\n{self.output()}")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s); idempotent."""
        p = self.process
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if self._log is not None:
            self._final_output = self.output()
            self._log.close()
            self._log = None

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        if self._log is None:
            return self._final_output
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        """GET ``path`` (e.g. ``/data/runs``) from the server; the body."""
        with _OPENER.open(self.base_url + path, timeout=timeout) as r:
            return r.read()

    def json(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` and decode JSON."""
        return json.loads(self.get(path, timeout))

    def __enter__(self) -> TensorBoardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def event_runs(logdir: str | os.PathLike) -> list[str]:
    """TensorBoard's run names for ``logdir``: each directory holding an event file, relative
    to ``logdir`` (``"."`` for ``logdir`` itself)."""
    logdir = os.fspath(logdir)
    runs = []
    for root, _dirs, files in os.walk(logdir):
        if any(".tfevents." in f for f in files):
            rel = os.path.relpath(root, logdir)
            runs.append("." if rel == os.curdir else rel.replace(os.sep, "/"))
    return sorted(runs)


def exact(tags: Iterable[str]) -> str:
    """A ``tagFilter`` regex matching exactly ``tags``."""
    return "^(" + "|".join(re.escape(t) for t in tags) + ")$"


@dataclass
class View:
    """One dashboard screenshot: ``#<dashboard>`` (with ``tagFilter`` if given), waiting until
    every text of ``expect`` is visible (and, with ``images``, every ``<img>`` decoded)."""

    name: str
    dashboard: str
    expect: Sequence[str]
    tag_filter: str | None = None
    images: bool = False

    def url(self, base_url: str) -> str:
        url = f"{base_url}/#{self.dashboard}"
        if self.tag_filter:
            url += "&tagFilter=" + urllib.parse.quote(self.tag_filter, safe="")
        return url


@dataclass
class Shot:
    """What :func:`screenshot` saw in one view."""

    view: View
    path: str
    url: str
    visible: dict[str, bool]
    #: (complete, naturalWidth, naturalHeight) of each ``<img>`` of the page
    images: list[tuple[bool, int, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [t for t, ok in self.visible.items() if not ok]


@dataclass
class Session:
    """Everything :func:`screenshot` saw: the views, and the browser's network traffic."""

    shots: dict[str, Shot]
    hosts: set[str]
    failed_requests: list[str]


def screenshot(base_url: str, views: Sequence[View], out_dir: str | os.PathLike, *,
               timeout_ms: int = 20_000, settle_ms: int = 800,
               executable: str | None = None) -> Session:
    """Open each view in headless Chromium, wait for its texts, save ``<out_dir>/<name>.png``.

    ``timeout_ms`` bounds each view (page load and every wait together); a text not shown by
    then is reported in :attr:`Shot.missing`.

    Texts are found with playwright's text selectors, which pierce TensorBoard's open shadow
    roots; only visible matches count (hidden duplicates exist, e.g. the filter box echo).
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    executable = executable or chromium_path()
    if executable is None:
        raise RuntimeError("chromium not found: apt-get install -y chromium")
    os.makedirs(out_dir, exist_ok=True)
    shots: dict[str, Shot] = {}
    hosts: set[str] = set()
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=list(CHROMIUM_FLAGS))
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.on("request", lambda r: hosts.add(urllib.parse.urlsplit(r.url).netloc
                                                      or r.url.split(":", 1)[0]))
            context.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            for view in views:
                start = time.monotonic()
                url = view.url(base_url)
                page = context.new_page()  # a fresh app per view: nothing left from the last
                deadline = start + timeout_ms / 1000  # one budget for the whole view

                def left_ms(deadline: float = deadline) -> int:
                    return max(500, int(1000 * (deadline - time.monotonic())))

                page.goto(url, wait_until="networkidle", timeout=timeout_ms)
                visible = {}
                for text in view.expect:
                    loc = page.get_by_text(text, exact=True).filter(visible=True).first
                    try:
                        loc.wait_for(state="visible", timeout=left_ms())
                        visible[text] = True
                    except PlaywrightError:
                        visible[text] = False
                images: list[tuple[bool, int, int]] = []
                if view.images:
                    images = _wait_images(page, left_ms())
                page.wait_for_timeout(settle_ms)  # chart transitions
                path = os.path.join(os.fspath(out_dir), f"{view.name}.png")
                page.screenshot(path=path)
                page.close()
                shots[view.name] = Shot(view, path, url, visible, images,
                                        time.monotonic() - start)
        finally:
            browser.close()
    return Session(shots, hosts, failed)


def _wait_images(page: Any, timeout_ms: int) -> list[tuple[bool, int, int]]:
    """Wait until the page has an ``<img>`` and every one is decoded; their states."""
    script = "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
    deadline = time.monotonic() + timeout_ms / 1000
    states: list = []
    while time.monotonic() < deadline:
        states = page.locator("img").evaluate_all(script)  # css locators pierce shadow DOM
        if states and all(c and w > 0 for c, w, _ in states):
            break
        page.wait_for_timeout(200)
    return [(bool(c), int(w), int(h)) for c, w, h in states]


@dataclass
class Expected:
    """The tags the demo should write, derived from its model (parameter and layer names)."""

    #: MetricLogger's curves (always on)
    metrics: tuple[str, ...]
    #: per parameter tensor: ``update_ratio/<tensor>`` scalars
    update_ratios: tuple[str, ...]
    #: ``weights/<tensor>``, ``gradients/<tensor>`` and ``activations/<layer>`` histograms
    histograms: tuple[str, ...]
    #: the first layer's filter grid, ``filters/<tensor>``
    images: tuple[str, ...]
    #: text tags as served (tensorboardX stores ``add_text(tag)`` as ``<tag>/text_summary``)
    texts: tuple[str, ...]
    #: what the README screenshots show
    readme_scalars: tuple[str, ...]
    readme_histograms: tuple[str, ...]


METRIC_TAGS = ("loss/train", "loss/val", "accuracy/train", "accuracy/val")
#: layer kinds without histograms (a reshaped copy of the previous layer's output)
NO_HISTOGRAM_KINDS = frozenset({"flatten"})


def expected_tags(backend: Any) -> Expected:
    """What a demo run through ``backend`` (its :class:`~trainwatch.core.backend.Backend`)
    should have written."""
    params = backend.parameters()
    names = list(params)
    layers = [layer.name for layer in backend.layers() if layer.kind not in NO_HISTOGRAM_KINDS]
    first_weight = next(n for n, v in params.items() if v.ndim >= 2)
    last_weight = [n for n, v in params.items() if v.ndim >= 2][-1]
    return Expected(
        metrics=METRIC_TAGS,
        update_ratios=tuple(f"update_ratio/{n}" for n in names),
        histograms=(tuple(f"weights/{n}" for n in names)
                    + tuple(f"gradients/{n}" for n in names)
                    + tuple(f"activations/{n}" for n in layers)),
        images=(f"filters/{first_weight}",),
        texts=("gradcheck/report/text_summary",),
        readme_scalars=METRIC_TAGS,
        readme_histograms=(f"weights/{first_weight}", f"activations/{layers[0]}",
                           f"gradients/{last_weight}"),
    )


def demo_views(scalars: Sequence[str], histograms: Sequence[str], images: Sequence[str],
               charts: Sequence[str]) -> list[View]:
    """The README views: scalars, histograms, images (each narrowed to the given tags, since
    the legacy dashboards expand only two tag groups) and the custom-scalars charts."""
    views = [View("scalars", "scalars", scalars, exact(scalars))]
    if histograms:
        views.append(View("histograms", "histograms", histograms, exact(histograms)))
    if images:
        views.append(View("images", "images", images, exact(images), images=True))
    if charts:
        views.append(View("custom_scalars", "custom_scalars", charts))
    return views


def served_tags(server: TensorBoardServer, plugin: str) -> set[str]:
    """Every tag ``plugin`` serves, over all runs."""
    tags: set[str] = set()
    for run_tags in server.json(f"/data/plugin/{plugin}/tags").values():
        tags.update(run_tags)
    return tags


def chart_titles(layout: dict) -> list[str]:
    """The chart titles of a served custom-scalars layout, in order."""
    return [chart["title"] for cat in layout.get("category", []) for chart in cat["chart"]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo, serve it with TensorBoard, and save the README screenshots."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="docs/screenshots", help="folder of the PNG files")
    parser.add_argument("--epochs", type=int, default=10, help="demo epochs (default 10)")
    args = parser.parse_args(argv)
    from trainwatch.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="trainwatch_shots_") as tmp:
        logdir = os.path.join("runs", "demo")  # as the page shows it: the demo's default
        want = expected_tags(run_demo(logdir=os.path.join(tmp, logdir), epochs=args.epochs,
                                      progress=False).trainer.backend)
        with TensorBoardServer(logdir, cwd=tmp) as server:
            hists, images = served_tags(server, "histograms"), served_tags(server, "images")
            views = demo_views(
                want.readme_scalars,
                [t for t in want.readme_histograms if t in hists],
                [t for t in want.images if t in images],
                chart_titles(server.json("/data/plugin/custom_scalars/layout"))[:2],
            )
            for name in ("histograms", "images"):
                if name not in {v.name for v in views}:
                    print(f"{name}: the demo wrote none of the expected tags: no screenshot")
            session = screenshot(server.base_url, views, args.out)
    ok = True
    for shot in session.shots.values():
        print(f"{shot.path}: {shot.seconds:.1f} s, missing {shot.missing or 'nothing'}"
              + (f", images {shot.images}" if shot.view.images else ""))
        ok = ok and not shot.missing
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
