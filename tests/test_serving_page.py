"""The page of `dalle serve` in a real browser: Debian's headless Chromium, driven by
Playwright, against a real uvicorn server on loopback with a tiny model.

`make test` installs Chromium and sets DALLE_BROWSER_REQUIRED=1, so there a missing
browser fails the test; a bare `pytest` without one skips it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn

from dalle.serving.api import ServerOptions, create_app
from dalle.serving.backend import DalleBackend
from dalle.serving.jobs import JobQueue, Limits
from serving_helpers import SlowBackend, make_tiny_models

REPO = Path(__file__).parent.parent
ARTIFACTS = Path(os.environ.get("DALLE_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip
# Predicates are functions: the page's policy forbids evaluating strings (no unsafe-eval).
# The n-th job is finished: the history lists n jobs, the newest first and done. (The
# status line alone still reads "done" from the previous job right after a click.)
JOB_DONE = """n => {
  const rows = document.querySelectorAll('#history li');
  return rows.length === n && rows[0].lastChild.textContent === 'done'
    && document.getElementById('status').textContent.startsWith('done');
}"""


def _chromium() -> str:
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if found is None:
        if os.environ.get("DALLE_BROWSER_REQUIRED"):
            pytest.fail("chromium is not installed (make test installs Debian's package)")
        pytest.skip("chromium is not installed; `make test` installs it")
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live server on a free loopback port; each sampling step sleeps a little, so the
    progress bar has something to show."""
    root = tmp_path_factory.mktemp("page")
    model_dir, clip_dir = make_tiny_models(root)
    backend = SlowBackend(DalleBackend.load(model_dir, clip_dir, torch.device("cpu")),
                          step_seconds=0.1)  # fmt: skip
    queue = JobQueue({"dalle": backend}, root / "out", Limits(max_images=8))
    app = create_app(queue, ServerOptions(poll_seconds=0.02))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(10)


RECORD_PROGRESS = """() => {
  const bar = document.getElementById('progress');
  const value = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
  window.progressShown = [];
  Object.defineProperty(bar, 'value', {
    get() { return value.get.call(this); },
    set(v) { window.progressShown.push(v); value.set.call(this, v); },
  });
}"""


def test_the_page_generates_shows_progress_and_images(server) -> None:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_ARGS)  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server)
        page.wait_for_function(
            "() => !document.getElementById('model').textContent.includes('loading')"
        )
        assert "re-ranked by a CLIP" in page.text_content("#model")

        page.fill("#prompt", "a red circle above a blue square")
        page.click("#settings summary")
        page.fill("#num_images", "4")
        # Every value the page gives the progress bar, recorded as it is set: polling for a
        # value between 0 and 1 could miss them all when a busy machine delivers the
        # progress events between two animation frames.
        page.evaluate(RECORD_PROGRESS)
        page.press("#prompt", "Enter")  # Enter generates
        page.wait_for_function(
            "() => document.querySelectorAll('#images img').length === 4 && "
            "[...document.querySelectorAll('#images img')].every(i => i.naturalWidth > 0)",
            timeout=60_000,
        )
        page.wait_for_function(JOB_DONE, arg=1)
        shown = page.evaluate("window.progressShown")
        assert any(0 < value < 1 for value in shown), shown
        assert page.eval_on_selector("#progress", "p => p.value") == 1
        assert page.is_visible("#download") and not page.is_visible("#cancel")
        assert "a red circle above a blue square" in page.text_content("#history")
        page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

        # A prompt is text, never markup.
        hostile = '<img src=x onerror="window.hacked=1">'
        page.fill("#prompt", hostile)
        page.fill("#num_images", "1")
        page.click("#generate")
        page.wait_for_function(JOB_DONE, arg=2)
        assert page.evaluate("window.hacked") is None
        assert hostile in page.text_content("#history")

        # Errors are shown as a message, and the page goes on working.
        page.fill("#prompt", "a red circle above a blue square " * 3)  # too many tokens
        page.click("#generate")
        page.wait_for_selector("#error:not([hidden])")
        assert "at most 39" in page.text_content("#error")
        assert not page.is_disabled("#generate")

        # A phone's width: nothing sticks out sideways. Reopening a job from the history
        # shows its images again.
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.click("#history li:nth-child(2)")
        page.wait_for_function("() => document.querySelectorAll('#images img').length === 4")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px phone"
        page.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"), full_page=True)
        browser.close()
    # No script errors and no policy violations; the one failed request is the 422 asked for.
    assert [p for p in problems if "status of 422" not in p] == []
