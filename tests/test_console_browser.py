"""The console in a real browser (headless Chromium via Selenium) against a real server: the seed query typed
into the page reads the drinks first, Explain's heatmap has the Explain RPC's rows and columns, a bad filter
shows the server's message under the filter box, the map puts the query beside the drinks, and every view is a
link. Each test saves a screenshot of its view (1280x800) in its tmp dir.

Without Chromium or chromedriver the module is skipped, unless SEMSEARCH_REQUIRE_BROWSER=1 (CI), where that fails.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from conftest import InProcessServer
from semsearch.errors import InvalidArgumentError
from semsearch.v1 import search_service_pb2 as pb

QUERY = "I drink water with wine"
DRINKS, FOOD = {"c3", "c4", "c5"}, {"c1", "c2"}
CHROMIUM = os.environ.get("SEMSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SEMSEARCH_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_SECONDS = 30


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the server's test extra)")
    if missing:
        message = f"the console's browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("SEMSEARCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SEMSEARCH_REQUIRE_BROWSER=1 but {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def console(tmp_path_factory, embedder, explainer):
    _browser_or_skip()
    srv = InProcessServer(tmp_path_factory.mktemp("console"), embedder, explainer, seed_demo=True, console_port=0)
    yield srv, f"http://127.0.0.1:{srv.app.console.port}"
    srv.stop()


@pytest.fixture(scope="module")
def browser(console):
    """One headless Chromium for the module, 1280x800, with a profile of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="semsearch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # The viewport itself 1280x800 (a window of that size has less room for the page).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    )
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The console page in the browser: open a link, act, wait for the render the action started."""

    def __init__(self, driver, url: str) -> None:
        self.driver, self.url = driver, url

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def _ready(self) -> str | None:
        return self.driver.execute_script("return document.body && document.body.dataset.ready || null")

    def rendered(self, action) -> None:
        """Runs `action` and waits until the page has rendered again (console.js sets body[data-ready])."""
        from selenium.webdriver.support.ui import WebDriverWait

        before = self._ready()
        action()
        WebDriverWait(self.driver, WAIT_SECONDS).until(lambda d: self._ready() not in (None, before))

    def open(self, **params: str) -> None:
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        self.rendered(lambda: self.driver.get(f"{self.url}/?{query}" if query else f"{self.url}/"))

    def wait_for(self, css: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT_SECONDS).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def state(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.driver.current_url).query))

    def screenshot(self, path: Path) -> Path:
        assert self.driver.save_screenshot(str(path)), path
        return path


@pytest.fixture
def page(browser, console) -> Page:
    return Page(browser, console[1])


def test_seed_query_typed_into_the_page_reads_the_drinks_first(page, tmp_path):
    page.open()
    page.wait_for("#query").send_keys(QUERY)
    page.rendered(lambda: page.find("#search").click())
    ids = [hit.get_attribute("data-id") for hit in page.find_all("#view .hit")]
    assert set(ids[:3]) == DRINKS and set(ids[3:]) == FOOD
    first = page.find("#view .hit")
    assert float(first.find_element("css selector", ".score").text) > 0
    assert first.find_element("css selector", "mark").text  # its best passage, highlighted in its text
    assert page.state() == {"collection": "demo", "q": QUERY}  # the view is a link
    print(page.screenshot(tmp_path / "console-results.png"))


def test_explain_link_opens_the_heatmap_of_the_rpcs_rows_and_columns(page, console, tmp_path):
    srv, _ = console
    page.open(q=QUERY, explain="c3")
    table = page.wait_for("#heatmap")
    expected = srv.client.stub.Explain(pb.ExplainRequest(collection="demo", query=QUERY, doc_id="c3", top_k=5))
    rows = page.find_all("#heatmap tbody tr")
    assert (int(table.get_attribute("data-rows")), int(table.get_attribute("data-cols"))) == (
        expected.rows,
        expected.cols,
    )
    assert len(rows) == expected.rows
    assert all(len(r.find_elements("css selector", "td")) == expected.cols for r in rows)
    assert [r.find_element("css selector", "th").get_attribute("title") for r in rows] == [
        s.text for s in expected.query_segments
    ]
    columns = page.find_all("#heatmap thead th[title]")
    assert [c.get_attribute("title") for c in columns] == [s.text for s in expected.doc_segments]
    # The word contributions are highlighted on both texts.
    assert page.find_all("#explain-query .seg") and page.find_all("#explain-doc .seg")
    print(page.screenshot(tmp_path / "console-explain.png"))
    page.find("#show-attention").click()
    page.wait_for("#cross-attention")
    assert page.state()["attention"] == "1"


def test_bad_filter_shows_the_servers_message_under_the_filter_box(page, console, tmp_path):
    srv, _ = console
    bad = "kind == drink"
    with pytest.raises(InvalidArgumentError) as raised:
        srv.client.search(QUERY, collection="demo", where=bad)
    page.open(q=QUERY)
    page.find("#where").send_keys(bad)
    page.rendered(lambda: page.find("#search").click())
    message = page.wait_for("#where-error").text
    assert message.startswith("where.expression:")
    assert message in str(raised.value)
    assert "bad" in page.find("#where").get_attribute("class")
    assert not page.find_all("#view .hit")  # no results of an earlier query left standing
    print(page.screenshot(tmp_path / "console-bad-filter.png"))


def test_map_puts_the_query_beside_the_drinks_and_hover_shows_text_and_score(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    page.open(q=QUERY, view="map")
    page.wait_for("#map-svg")
    assert "distorts distances" in page.find("#map-note").text

    def centre(doc_id: str) -> tuple[float, float]:
        box = page.find(f'#map-svg .point[data-id="{doc_id}"]').rect
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    query = centre("query")
    to_drinks = max(math.dist(query, centre(d)) for d in DRINKS)
    to_food = min(math.dist(query, centre(d)) for d in FOOD)
    assert to_drinks < to_food
    ActionChains(page.driver).move_to_element(page.find('#map-svg .point[data-id="c3"] circle')).perform()
    tip = page.wait_for("#tooltip").text
    assert "c3" in tip and "score" in tip
    print(page.screenshot(tmp_path / "console-map.png"))


def test_compare_why_not_and_documents_views(page, tmp_path):
    page.open(q=QUERY, view="compare", why_not="c1", top_k="3")
    assert [len(page.find_all(f"#compare-{m} .hit")) for m in ("dense", "lexical", "hybrid")] == [3, 3, 3]
    assert page.find_all("#compare-hybrid .move")  # rank changes against dense, marked
    verdict = page.wait_for("#why-not-result").text
    assert "short of the k-th score" in verdict and "gap" in verdict
    print(page.screenshot(tmp_path / "console-compare-why-not.png"))
    page.open(q=QUERY, why_not="c3", where='kind == "eat"')
    assert "Excluded by the filter" in page.wait_for("#why-not-result").text
    page.open(view="browse", where='kind == "drink"')
    assert [r.find_element("css selector", "td").text for r in page.find_all("#documents tr")[1:]] == ["c3", "c4", "c5"]
    print(page.screenshot(tmp_path / "console-documents.png"))
