"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium.

A service with an API key runs a federation of 3 rounds whose rounds end when the test says
so; the browser logs in through the form, opens the federation and must show each round's
point on the chart within seconds of its end, and the rejected party with its reason.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from dashboard_helpers import WRONG_SHAPE, create_federation, run_parties, stop
from fedfuse.service import ServiceSettings, background_service

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver): /usr/bin/chromium or /usr/bin/chromedriver is missing",
    ),
]
API_KEY = "the-browser-tests-api-key"
WITHIN = 30.0  # seconds: generous for busy CI machines; the benchmark measures the real latency


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,1300")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(DRIVER)))


def wait_until(predicate, what: str, timeout: float = WITHIN):
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout:g} s: {what}")


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def test_the_chart_gets_each_rounds_point_and_the_rejection_shows_its_reason(browser, tmp_path):
    from selenium.webdriver.common.by import By

    settings = ServiceSettings(data_dir=str(tmp_path / "state"), api_key=API_KEY)
    with background_service(settings) as url:
        fid, token = create_federation(url, rounds=3, api_key=API_KEY)
        gate = threading.Semaphore(0)
        parties = run_parties(url, token, gate=gate)
        try:
            browser.get(f"{url}/dashboard/federations/{fid}")
            assert "Log in" in browser.find_element(By.TAG_NAME, "h1").text  # 401: the form
            browser.find_element(By.NAME, "key").send_keys(API_KEY)
            browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            # the form came with the federation's id: the login leads back to its page
            live = wait_until(lambda: browser.find_elements(By.ID, "live"), "the live section")[0]
            wait_until(lambda: live.get_attribute("data-connected"), "the event stream")
            browser.get_log("browser")  # read (and so drop) the log so far: the 401 before login
            history = f"{url}/v1/federations/{fid}/history"
            auth = {"Authorization": f"Bearer {API_KEY}"}
            for round_num in (1, 2, 3):
                gate.release()  # the good party answers: the round ends
                wait_until(
                    lambda n=round_num: len(httpx.get(history, headers=auth).json()["rounds"]) >= n,
                    f"round {round_num} recorded",
                )
                wait_until(
                    lambda n=round_num: live.get_attribute("data-points") == str(n),
                    f"round {round_num}'s point on the chart",
                )
            canvas = browser.find_elements(By.CSS_SELECTOR, "#chart-accuracy canvas")
            assert canvas, "uPlot drew no accuracy chart"
            rows = browser.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")
            assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["1", "2", "3"]

            def rejected_row():
                for row in browser.find_elements(By.CSS_SELECTOR, "#parties tbody tr"):
                    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
                    if cells[1] == "bad" and cells[2] == "rejected":
                        return cells
                return None

            cells = wait_until(rejected_row, "the rejected party")
            assert cells[3] == f"round 3: {WRONG_SHAPE}"
            wait_until(lambda: live.get_attribute("data-ended") == "true", "the stream's end")
            shot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            blocked = [
                e["message"]
                for e in browser.get_log("browser")
                if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"
            ]
            assert blocked == []  # nothing the CSP refused, no script error, no failed load
        finally:
            stop(parties)
