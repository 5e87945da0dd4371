"""Headless Chromium for the browser tests: serve a written site and evaluate a script in it."""

from __future__ import annotations

import shutil

import pytest

from tiedonnx.runtime.web import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium not on PATH (Debian: apt-get install -y chromium)")


def evaluate_in_site(site, script: str, arg=None, *, query: str = ""):
    """Serve ``site``, open ``index.html`` + ``query`` in headless Chromium and return ``page.evaluate(script, arg)``.

    Skips the test when playwright-python is missing (it drives Debian's chromium, no ``playwright install``).
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright-python not installed")
    with sync_api.sync_playwright() as p, serving(site) as url:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + query)
            return page.evaluate(script, arg)
        finally:
            browser.close()
