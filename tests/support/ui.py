"""Drive the web UI in a real browser: Debian's chromium, headless, through Playwright (no
browser download; ``TAILSIFT_CHROMIUM`` names another binary). Every request the page makes
is recorded, so a test can prove it asked no host but the collector."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page, sync_playwright

ARTIFACTS = Path(os.environ.get("TAILSIFT_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def chromium_path() -> str | None:
    return os.environ.get("TAILSIFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class BrowserLog:
    """What the page asked for, and what went wrong in it."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, kind: str, text: str) -> None:
        """Console errors, but not the browser's line for an HTTP error status (401, 404): the
        page answers those itself, and the tests check what it shows."""
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(f"console error: {text}")

    def hosts(self) -> set[str]:
        return {urlsplit(url).netloc for url in self.requests if not url.startswith(("data:", "blob:"))}


@contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator[tuple[Page, BrowserLog]]:
    executable = chromium_path()
    assert executable, "no chromium: install Debian's chromium package (.ci/run does) or set TAILSIFT_CHROMIUM"
    log = BrowserLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])  # fmt: skip
        context = browser.new_context(viewport={"width": width, "height": height}, locale="en-GB", timezone_id="UTC")
        page = context.new_page()
        page.on("request", lambda request: log.requests.append(request.url))
        page.on("pageerror", lambda error: log.errors.append(f"page error: {error}"))
        page.on("console", lambda msg: log.console(msg.type, msg.text))
        try:
            yield page, log
        finally:
            context.close()
            browser.close()


def open_page(page: Page, url: str) -> None:
    """Go to ``url`` and wait until the page's script has rendered what the API answered."""
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def run_axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page, at its default rules (contrast included)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    violations: list[dict[str, Any]] = results.response["violations"]
    return violations
