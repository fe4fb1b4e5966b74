"""Headless Chromium for page checks (the report, the MLflow UI), driven by selenium.

`open_page(url_or_path, screenshot=None)` loads a page, waits for it and its images, and returns
(console errors, per-image info, visible text). `require_chromium()` skips a test when Chromium
or its driver is missing, except in CI (`CI` set), where a missing browser fails the test.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1280,900")
IMAGES_JS = """return Array.from(document.images).map(i => ({
  src: i.getAttribute('src').slice(0, 80), complete: i.complete,
  naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}));"""
MAX_SCREENSHOT_HEIGHT = 12000


def chromium_paths() -> tuple[str | None, str | None]:
    """(browser, driver) executables, or None where missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return browser, shutil.which("chromedriver")


def require_chromium() -> tuple[str, str]:
    """The browser and driver paths; skip (locally) or fail (CI) when either or selenium is missing."""
    browser, driver = chromium_paths()
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = f"headless browser check needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


def _as_url(url_or_path: str | Path) -> str:
    text = str(url_or_path)
    return text if "://" in text else Path(text).resolve().as_uri()


def _wait(driver, condition_js: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.execute_script(condition_js):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def chromium(timeout_s: float, width: int = 1280, console: bool = False):
    """A headless Chromium driver (FLAGS; `width` px wide; the browser log kept with `console`), quit after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_window_size(width, 900)
        driver.set_page_load_timeout(timeout_s)
        driver.set_script_timeout(timeout_s)
        yield driver
    finally:
        driver.quit()


def open_page(url_or_path: str | Path, screenshot: str | Path | None = None, timeout_s: float = 20.0,
              settle_s: float = 0.0, width: int = 1280) -> tuple[list[str], list[dict], str]:
    """Load a page in headless Chromium; return (console errors, images info, page text).

    Console errors are the browser log's SEVERE entries (script errors, failed loads). Images info
    has per <img>: src (first 80 characters), complete, naturalWidth, naturalHeight. With
    `screenshot`, a full-page PNG (capped in height) is written there. `settle_s` waits that long
    after load for client-side rendering (single-page apps). `width`: the window's, in pixels.
    """
    from selenium.webdriver.common.by import By

    with chromium(timeout_s, width, console=True) as driver:
        driver.get(_as_url(url_or_path))
        _wait(driver, "return document.readyState === 'complete' && "
                      "Array.from(document.images).every(i => i.complete);", timeout_s)
        if settle_s:
            time.sleep(settle_s)
        images = driver.execute_script(IMAGES_JS)
        text = driver.find_element(By.TAG_NAME, "body").text
        errors = [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(width, max(600, min(int(height) + 100, MAX_SCREENSHOT_HEIGHT)))
            driver.save_screenshot(str(screenshot))
        return errors, images, text


# Counts, per spec, the data marks vega placed (bars, line points, symbols, areas at finite positions; not
# axes or rules) by walking each view's scene graph. A spec whose data does not fit its encoding (a text
# field on a quantitative axis: "Infinite extent") places none.
VEGA_MARKS_JS = """
const specs = arguments[0], done = arguments[arguments.length - 1];
const drawn = ['rect', 'line', 'symbol', 'area'];
function count(node) {
  let n = 0;
  for (const mark of (node && node.items) || []) {
    if (mark.marktype === 'group') { for (const group of mark.items || []) n += count(group); }
    else if (mark.role === 'mark' && drawn.includes(mark.marktype))
      n += (mark.items || []).filter(i => Number.isFinite(i.x) && Number.isFinite(i.y)).length;
  }
  return n;
}
Promise.all(specs.map(spec => {
  const element = document.createElement('div');
  document.body.appendChild(element);
  return vegaEmbed(element, spec, {renderer: 'svg', actions: false})
    .then(result => count(result.view.scenegraph().root.items[0]), error => 'error: ' + error);
})).then(done, error => done(['error: ' + error]));
"""


def dvc_plot_specs(page: str) -> dict[str, dict]:
    """The vega-lite specs of a `dvc plots show` page, by plot div id (dvc_render/vega.py writes
    `var spec = {...}; vegaEmbed('#<id>', spec);` for each)."""
    import json
    import re

    specs = {}
    for match in re.finditer(r"var spec = ", page):
        spec, end = json.JSONDecoder().raw_decode(page, match.end())
        target = re.match(r";\s*vegaEmbed\('#([^']+)'", page[end:])
        specs[target.group(1) if target else str(len(specs))] = spec
    return specs


def vega_mark_counts(page_path: str | Path, specs: list[dict], timeout_s: float = 60.0) -> list:
    """Draw `specs` in headless Chromium on the page `page_path` (which loads vega-embed) and return the
    number of data marks each drew, or 'error: ...' where vega failed."""
    with chromium(timeout_s) as driver:
        driver.get(_as_url(page_path))
        _wait(driver, "return document.readyState === 'complete' && typeof vegaEmbed === 'function';", timeout_s)
        return driver.execute_async_script(VEGA_MARKS_JS, specs)


# The text of the elements that lie wholly within the first viewport (what a reader sees before scrolling).
FIRST_SCREEN_JS = """
const height = window.innerHeight;
return Array.from(document.querySelectorAll('h1, h2, h3, p, th, td, figcaption'))
  .filter(e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= height && r.height > 0; })
  .map(e => e.innerText).join('\\n');
"""


def first_screen(url_or_path: str | Path, screenshot: str | Path | None = None, timeout_s: float = 20.0) -> str:
    """The text wholly visible in the first 1280x900 viewport of a page, unscrolled; with `screenshot`,
    a PNG of that viewport."""
    with chromium(timeout_s) as driver:
        driver.get(_as_url(url_or_path))
        _wait(driver, "return document.readyState === 'complete';", timeout_s)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return driver.execute_script(FIRST_SCREEN_JS)
