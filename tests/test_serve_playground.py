"""The playground page in a real browser: Debian's chromium, driven by Playwright.

Without /usr/bin/chromium the test skips, except under CI (CI=true or
AIGC_REQUIRE_SHARED_DATA=1), where it fails: `.ci/run` installs chromium with apt-get.
Set AIGC_SCREENSHOT=docs/img/serve-playground.png to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from aigc.serve.app import create_app
from serve_fixtures import LiveServer, gan_run, gpt_run  # noqa: F401 (fixtures)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(gpt_run, gan_run, tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        message = f"no chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true" or os.environ.get("AIGC_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    live = LiveServer(create_app(gpt=[f"shakespeare={gpt_run}"], gan=[f"digits={gan_run}"], device="cpu",
                                 max_tokens_cap=100_000))
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS,
                                                                 viewport={"width": 1000, "height": 640})
        page = browser.new_page()
        page.goto(live.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        page.live = live
        yield page
        browser.close()
    live.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_a_completion_streams_into_the_page(page):
    page.select_option("#model", "shakespeare")
    page.fill("#prompt", "to be or")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent === 'done'", timeout=30_000)
    output = page.text_content("#output")
    assert output.startswith("to be or") and len(output) == len("to be or") + 40  # char model: 40 tokens
    if os.environ.get("AIGC_SCREENSHOT"):
        page.screenshot(path=os.environ["AIGC_SCREENSHOT"])


def test_stop_ends_the_stream_and_frees_the_row(page):
    page.fill("#max-tokens", "100000")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#output').textContent.length > 30")
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'stopped'")
    engine = page.live.engine("shakespeare")
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0


def test_a_gan_model_draws_a_grid_of_the_chosen_class(page):
    page.select_option("#model", "digits")
    assert page.is_hidden("#text-panel") and page.is_visible("#image-panel")
    page.select_option("#class", "7")
    page.click("#draw")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 16 && "
                           "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth === 28)")
