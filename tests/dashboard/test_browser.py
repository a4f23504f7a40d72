"""The demo's dashboards rendered by headless Chromium (Debian's ``chromium``, driven by pip
``playwright``): the expected tags must appear on the page, images must decode, and the page
must fetch nothing but the local TensorBoard server. Screenshots go to a temporary folder."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.dashboard.screenshots import (
    Session,
    chart_titles,
    chromium_path,
    demo_views,
    screenshot,
)

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser(demo, tensorboard, tmp_path_factory) -> Session:
    """Every dashboard view, opened once in one browser."""
    want = demo.expected
    layout = tensorboard.json("/data/plugin/custom_scalars/layout")
    views = demo_views(want.readme_scalars, want.readme_histograms, want.images,
                       chart_titles(layout)[:2])
    return screenshot(tensorboard.base_url, views, tmp_path_factory.mktemp("screenshots"))


def check_shot(browser: Session, name: str) -> None:
    shot = browser.shots[name]
    assert not shot.missing, (f"{shot.url}: not visible {shot.missing} "
                              f"(screenshot: {shot.path})")
    with open(shot.path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_scalars_dashboard_shows_the_loss_and_accuracy_curves(browser):
    check_shot(browser, "scalars")


def test_custom_scalars_dashboard_shows_the_layout_charts(browser):
    assert browser.shots["custom_scalars"].visible  # the layout has charts to look for
    check_shot(browser, "custom_scalars")


def test_histograms_dashboard_shows_weights_activations_and_gradients(browser):
    check_shot(browser, "histograms")


def test_images_dashboard_shows_the_decoded_filter_grid(browser):
    check_shot(browser, "images")
    images = browser.shots["images"].images
    assert images, "no <img> on the images dashboard"
    assert all(complete and width > 0 for complete, width, _ in images), images


def test_dashboards_fetch_only_from_the_local_server(browser, tensorboard):
    local = urllib.parse.urlsplit(tensorboard.base_url).netloc
    assert browser.hosts <= {local, "data"}, browser.hosts  # "data": inline data: URLs
    assert not [r for r in browser.failed_requests if "ERR_ABORTED" not in r], (
        browser.failed_requests)
