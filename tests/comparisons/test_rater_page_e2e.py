"""The rater page served by the real API, in a real headless Chromium: an invited rater (no API
key) votes with a click and a key, and the votes land in the database, beside a judge's votes
that were there first (they neither hide pairs from people nor change what the page shows)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons import ladder, service
from app.comparisons.judges import JudgeVote, JudgeVotes
from app.comparisons.outputs import ComparisonAnswers
from app.comparisons.tables import Comparison
from app.main import create_app
from app.settings import Settings
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

ANSWERS = {"mdl_x": ["x says one", "x says two"], "mdl_y": ["y says one", "y says two"]}


@pytest.fixture
def served(settings: Settings, factory: sessionmaker[Session]) -> Iterator[str]:
    with serve_in_thread(create_app(settings, run_reaper=False), log_level="warning") as url:
        yield url


def _open_comparison(factory: sessionmaker[Session], tenant_id: str) -> tuple[str, str]:
    with factory() as session:
        comparison = Comparison(
            id="cmp_01JAAAAAAAAAAAAAAAAAAAAAAA",
            tenant_id=tenant_id,
            status="generating",
            model_ids=list(ANSWERS),
            settings={},
            secret="s" * 64,
        )
        session.add(comparison)
        answers = ComparisonAnswers(comparison.id, ["Prompt one", "Prompt two"], ANSWERS)
        answers.record(session=session)
        JudgeVotes(comparison.id, "judge:mdl_j", {"position_bias": 0.5}, [
            JudgeVote(0, "mdl_x", "mdl_y", "mdl_x"), JudgeVote(1, "mdl_x", "mdl_y", "tie"),
        ]).record(session=session)  # fmt: skip
        session.commit()
        _, token = service.add_rater(session=session, comparison=comparison, name="Ada")
        return comparison.id, token


def test_an_invited_rater_votes_on_the_real_page(
    served: str, factory: sessionmaker[Session], tenant: str
) -> None:
    cid, token = _open_comparison(factory, tenant)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=390,844"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 20)
    try:
        driver.get(f"{served}/rate/{token}")
        wait.until(lambda d: d.find_element(By.ID, "prompt").text.startswith("Prompt"))
        first = driver.find_element(By.ID, "prompt").text
        sides = {driver.find_element(By.ID, "a").text, driver.find_element(By.ID, "b").text}
        assert sides in ({"x says one", "y says one"}, {"x says two", "y says two"})
        assert "mdl_" not in driver.page_source
        driver.find_element(By.ID, "vote-a").click()
        wait.until(lambda d: d.find_element(By.ID, "prompt").text not in ("", first))
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: "All done" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "count").text == "2 votes"
    finally:
        driver.quit()
    with factory() as session:
        comparison = session.get_one(Comparison, cid)
        results = ladder.results(session=session, comparison=comparison, rounds=10)
    assert results["votes"] == 4 and results["raters"] == 2
    assert results["outcomes"] == {"a": 2, "b": 1, "tie": 1, "both_bad": 0}
    assert results["left_win_rate"] == 0.5  # people's votes only: a judge sees both sides
    (judged,) = results["judges"]
    assert judged["name"] == "judge:mdl_j" and judged["position_bias"] == 0.5
    assert judged["human_agreement"]["pairs"] == 2
