"""End to end in a real browser: `photodex serve` over a small synthetic-world collection, `photodex ui`
against it, and Debian's headless Chromium driven by Selenium through the system chromedriver.

Skipped (with the reason) only where Chromium is not installed and CI is not set; in CI it must run
(.ci/run installs the `chromium` and `chromium-driver` packages). Screenshots land in the test's
tmp dir (search.png, min_score.png) as artefacts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import SMALL_WORLD, env_offline
from ui.demo.world import class_prompt

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000")
START_TIMEOUT = 45
WAIT = 20


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return (f"Chromium or chromedriver not installed ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _process(args: list[str], url: str, log: Path) -> Iterator[subprocess.Popen]:
    """Start ``python -m ui.cli ARGS`` and wait until ``url`` answers 200."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ui.cli", *args], env=env_offline(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:  # the whole session: `photodex ui` execs streamlit, whatever it started goes too
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(procs: list[tuple[subprocess.Popen, str, Path]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(procs)
    while pending:
        for item in list(pending):
            proc, url, log = item
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    pending.remove(item)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {START_TIMEOUT}s: {[u for _, u, _ in pending]}; "
                                 + " | ".join(log.read_text()[-1500:] for _, _, log in pending))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def servers(browser_ready, tmp_path_factory, world_of) -> Iterator[str]:
    """The API over a copy of the small shared world collection and the web UI against it; the UI's URL."""
    root = tmp_path_factory.mktemp("web_browser")
    world = world_of(*SMALL_WORLD).copy(root / "collection")
    api_port, ui_port = _free_port(), _free_port()
    api, ui = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"
    with ExitStack() as stack:
        api_proc = stack.enter_context(_process(["serve", "--port", str(api_port), "--collection", str(world.path)],
                                                f"{api}/api/v1/readyz", root / "api.log"))
        ui_proc = stack.enter_context(_process(["ui", "--api", api, "--port", str(ui_port)],
                                               f"{ui}/_stcore/health", root / "ui.log"))
        _wait_ready([(api_proc, f"{api}/api/v1/readyz", root / "api.log"),
                     (ui_proc, f"{ui}/_stcore/health", root / "ui.log")])
        yield ui


@pytest.fixture()
def driver(servers, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(WAIT)
    try:
        yield drv
    finally:
        drv.quit()


def _showing(drv) -> tuple[int, int] | None:
    from selenium.webdriver.common.by import By

    for el in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stCaptionContainer"]'):
        m = re.match(r"Showing (\d+) of (\d+) results", el.text)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _thumbnails(drv) -> list:
    from selenium.webdriver.common.by import By

    return [img for img in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] [data-testid="stImage"] img')
            if img.get_attribute("naturalWidth") not in (None, "0")]


def test_search_grid_scores_and_min_score_slider(servers, driver, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # Streamlit redraws elements while a run completes: a stale element just means "look again"
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(servers)
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="Search"]'))
    wait.until(lambda d: "photos" in d.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text)  # API status
    box.send_keys(class_prompt("red circle"), Keys.ENTER)
    wait.until(lambda d: (s := _showing(d)) is not None and len(_thumbnails(d)) == s[0] > 0)
    shown, total = _showing(driver)
    assert shown == total

    def scores(d) -> list[float] | None:
        captions = [el.text for el in d.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')]
        found = [float(m.group(1)) for c in captions if (m := re.match(r"#\d+ · (-?\d\.\d{3})", c))]
        return found if len(found) == total else None

    scores = wait.until(scores)
    assert scores[0] == max(scores)  # DOM order is column by column; the best first
    driver.save_screenshot(str(tmp_path / "search.png"))

    slider = driver.find_element(By.CSS_SELECTOR, 'input[type="range"][aria-label="Minimum score"]')
    driver.execute_script("arguments[0].focus()", slider)  # the range input is visually hidden behind its thumb
    ActionChains(driver).send_keys(Keys.END).perform()  # the highest score: only the best matches stay
    wait.until(lambda d: (s := _showing(d)) is not None and s[0] < total and len(_thumbnails(d)) == s[0])
    fewer, _ = _showing(driver)
    assert 1 <= fewer < total
    driver.save_screenshot(str(tmp_path / "min_score.png"))
    assert (tmp_path / "search.png").stat().st_size > 10_000
