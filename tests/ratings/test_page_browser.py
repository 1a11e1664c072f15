"""The rater page in a real headless Chromium: vote with a click and with keys, see votes land."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import HTMLResponse

from app.ratings.page import page_headers, render_page
from tests.serving import serve_in_thread

pytestmark = pytest.mark.slow

selenium = pytest.importorskip("selenium")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "rtk_test</script><b>"  # a hostile token must not break out of the config element
PAIRS = [
    {"ticket": f"t{i}", "prompt": f"Prompt {i}", "a": f"left {i}", "b": f"right {i}"}
    for i in range(4)
]


def _app(votes: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    def check(auth: str | None) -> None:
        if auth != f"Bearer {TOKEN}":
            raise HTTPException(401)

    @app.get("/rate/{token}", response_class=HTMLResponse)
    def page(token: str) -> HTMLResponse:
        # With the API's headers, so the page is proven to work under its own CSP.
        return HTMLResponse(render_page("cmp_1", TOKEN), headers=page_headers())

    @app.get("/v1/comparisons/{cid}/next")
    def next_pair(cid: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        check(authorization)
        assert cid == "cmp_1"
        return PAIRS[len(votes)] if len(votes) < len(PAIRS) else {"done": True}

    @app.post("/v1/comparisons/{cid}/votes", status_code=201)
    def vote(
        cid: str, body: dict[str, Any], response: Response, authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        check(authorization)
        votes.append(body)
        return {"votes": len(votes)}

    return app


@pytest.fixture
def served() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    votes: list[dict[str, Any]] = []
    with serve_in_thread(_app(votes), log_level="warning") as url:
        yield url, votes


def test_votes_with_clicks_and_keys(served: tuple[str, list[dict[str, Any]]]) -> None:
    url, votes = served
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=390,844"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(f"{url}/rate/anything")
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == "Prompt 0")
        assert driver.find_element(By.ID, "a").text == "left 0"
        # Phone width: the answers stack, so both stay readable.
        a = driver.find_element(By.ID, "a").rect
        b = driver.find_element(By.ID, "b").rect
        assert b["y"] > a["y"] and a["width"] > 250

        driver.find_element(By.ID, "vote-a").click()
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == "Prompt 1")
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == "Prompt 2")
        body.send_keys("n")
        driver.switch_to.active_element.send_keys("both rambled")
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        body.send_keys("t")
        wait.until(lambda d: d.find_element(By.ID, "prompt").text == "Prompt 3")
        body.send_keys("4")
        wait.until(lambda d: "All done" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "count").text == "4 votes"
    finally:
        driver.quit()
    assert [(v["ticket"], v["choice"]) for v in votes] == [
        ("t0", "a"),
        ("t1", "b"),
        ("t2", "tie"),
        ("t3", "both_bad"),
    ]
    assert votes[2]["note"] == "both rambled" and votes[0]["note"] is None
