"""The Dagster UI in a real browser: the demo chain's asset and check pages render and read well.

`dagster dev` starts on a free 127.0.0.1 port over a temp DAGSTER_HOME while the demo chain is
materialized into that instance and a temp warehouse; headless Chromium (the system's, driven by
Playwright) then opens every asset's Events page, a check page and the job page. Screenshots land
in a temp dir, and are copied to $IMAGE_PIPELINE_UI_SHOTS when it is set, so a person can look.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from orchestration.demo import run_demo
from orchestration.jobs import PIPELINE_ASSETS, PIPELINE_JOB_NAME, image_pipeline_job
from orchestration.settings import REPO_ROOT, Settings
from sensors.drop_sensor import SENSOR_NAME
from tests.ui.dagster_ui import (
    DagsterDev,
    alive,
    command_line,
    dagster_dev,
    descendants,
    find_chromium,
    graphql,
    port_open,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on PATH (apt-get install chromium, or set IMAGE_PIPELINE_CHROMIUM)",
    ),
    pytest.mark.timeout(600),
]
DROP = "samples"
ASSET_NAMES = [asset.key.to_user_string() for asset in PIPELINE_ASSETS]
# Assets whose metadata carries plots, as <img> of a PNG data URL.
PLOT_ASSETS = {"label_agreement", "evaluation", "drop_page"}
# `evaluation` still shows `labelled_per_field` as JSON; its metadata is being reworked.
JSON_PENDING: set[str] = set()
CHECK_PAGE = ("label_agreement", "clip_vlm_agreement")
# Text Dagster shows when a page or one of its panels failed to load.
ERROR_TEXTS = ("Unexpected error", "An error occurred", "Something went wrong", "PythonError")
VIEWPORT = {"width": 1600, "height": 1000}
# Tall enough that a screenshot holds the whole metadata panel (it scrolls inside the page).
SHOT_HEIGHT = 4000
JOB_NAMES_QUERY = """
{ assetNodes { assetKey { path } jobNames } }
"""


@dataclass
class Demo:
    url: str
    shots: Path
    result: dg.ExecuteInProcessResult
    server: DagsterDev


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`dagster dev` loading while the demo chain runs into its instance; then both are ready."""
    base = tmp_path_factory.mktemp("dagster-ui")
    home, drops, shots = base / "home", base / "drops", base / "shots"
    for folder in (home, drops, shots):
        folder.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    warehouse = base / "warehouse.duckdb"
    env = {
        **os.environ,
        "IMAGE_PIPELINE_ENV": "local",
        "IMAGE_PIPELINE_WAREHOUSE": str(warehouse),
        "IMAGE_DROP_ROOT": str(drops),
        "IMAGE_DROP_SENSOR": "stopped",
    }
    # The instance's storage is created here first: two processes migrating a new SQLite
    # run storage at once leave two alembic heads and the code server fails to load.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    with dagster_dev(home, env, base / "dagster-dev.log") as server:
        settings = Settings(  # what `make demo` reads from the same environment
            environment="local",
            warehouse_path=warehouse,
            drop_root=drops,
            quiet_period_s=0,
            reports_port=server.reports_port,
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = run_demo(settings, instance)
        assert result.success
        try:
            yield Demo(server.wait_ready(), shots, result, server)
        finally:
            target = os.environ.get("IMAGE_PIPELINE_UI_SHOTS")
            if target:
                shutil.copytree(shots, target, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def browser(demo: Demo) -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            _skip_community_modal(chromium, demo.url)
            yield chromium
        finally:
            chromium.close()


def _skip_community_modal(browser: sync_api.Browser, url: str) -> None:
    """Dagster asks once, a second after the first page loads; Skip records the answer on the
    server, so later pages never show it."""
    page = browser.new_page()
    try:
        page.goto(url)
        with contextlib.suppress(sync_api.TimeoutError):
            page.get_by_role("button", name="Skip").click(timeout=30_000)
            page.wait_for_load_state("networkidle")
    finally:
        page.close()


class Watched:
    """A browser page whose GraphQL answers and script errors are collected as they come."""

    def __init__(self, browser: sync_api.Browser, url: str, shots: Path | None = None) -> None:
        self.errors: list[str] = []
        self.url = url
        self.shots = shots or Path(".")
        self.page = browser.new_context(viewport=VIEWPORT).new_page()
        self.page.on("response", self._response)
        self.page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))

    def _response(self, response: sync_api.Response) -> None:
        if not response.url.endswith("/graphql"):
            return
        if not response.ok:
            self.errors.append(f"GraphQL HTTP {response.status}")
            return
        with contextlib.suppress(Exception):  # a body gone with a navigation is no error
            body = response.json()
            operation = (response.request.post_data_json or {}).get("operationName")
            for error in body.get("errors") or []:
                self.errors.append(f"{operation}: {error.get('message')}")
            if '"PythonError"' in response.text():
                self.errors.append(f"{operation}: PythonError in the answer")

    def open(self, path: str, ready_text: str) -> sync_api.Page:
        """Go to `path`, skip the welcome modal, wait until `ready_text` shows."""
        self.page.set_viewport_size(VIEWPORT)
        self.page.goto(f"{self.url}{path}")
        self.page.get_by_text(ready_text, exact=True).first.wait_for(timeout=60_000)
        self.page.wait_for_load_state("networkidle")
        return self.page

    def shoot(self, path: Path) -> None:
        skip = self.page.get_by_role("button", name="Skip")
        if skip.is_visible():  # the community modal, when the first Skip did not reach it
            skip.click()
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": SHOT_HEIGHT})
        self.page.wait_for_timeout(500)  # let the layout settle at the new height
        self.page.screenshot(path=path)

    def markdown_dialogs(self, shots: Path, name: str) -> list[int]:
        """Open each `[Show Markdown]` entry (Dagster inlines markdown only under 1,000
        characters, so a PNG plot is always behind one) and measure the images it shows."""
        widths = []
        links = self.page.get_by_text("[Show Markdown]", exact=True)
        for index in range(links.count()):
            links.nth(index).click()
            dialog = self.page.get_by_role("dialog").last
            dialog.wait_for()
            self.page.wait_for_timeout(300)  # data-URL images decode
            widths.extend(_images_shown(dialog))
            if index == 0:
                dialog.screenshot(path=shots / f"asset-{name}-markdown.png")
            self.page.keyboard.press("Escape")
            dialog.wait_for(state="hidden")
        return widths

    def visible_errors(self) -> list[str]:
        body = self.page.inner_text("body")
        return [text for text in ERROR_TEXTS if text in body]


def _images_shown(where: sync_api.Page | sync_api.Locator) -> list[int]:
    """Natural widths of the PNG data-URL images shown (0: one failed to decode)."""
    return where.locator("img[src^='data:image/png']").evaluate_all(
        "images => images.map(i => i.complete ? i.naturalWidth : 0)"
    )


def test_every_asset_page_renders_its_metadata_without_errors(demo: Demo, browser):
    watched = Watched(browser, demo.url)
    for name in ASSET_NAMES:
        watched.open(f"/assets/{name}?view=events&partition={DROP}", "Metadata")
        watched.shoot(demo.shots / f"asset-{name}.png")
        assert watched.visible_errors() == [], name
        if name in PLOT_ASSETS:
            shown = _images_shown(watched.page) + watched.markdown_dialogs(demo.shots, name)
            assert shown and all(width > 0 for width in shown), f"{name}: plots {shown}"
    assert watched.errors == []


def test_a_check_page_renders_its_latest_execution(demo: Demo, browser):
    asset, check = CHECK_PAGE
    watched = Watched(browser, demo.url)
    page = watched.open(f"/assets/{asset}?view=checks&checkDetail={check}", "Latest execution")
    watched.shoot(demo.shots / f"check-{asset}-{check}.png")
    assert page.get_by_text(check).first.is_visible()
    assert watched.visible_errors() == [] and watched.errors == []


def test_the_job_page_shows_the_job_description(demo: Demo, browser):
    watched = Watched(browser, demo.url)
    path = f"/locations/image_pipeline/jobs/{PIPELINE_JOB_NAME}"
    page = watched.open(path, PIPELINE_JOB_NAME)
    assert "through the whole chain" in (image_pipeline_job.description or "")
    page.get_by_text("through the whole chain").first.wait_for(timeout=30_000)
    watched.shoot(demo.shots / "job.png")
    assert watched.visible_errors() == [] and watched.errors == []


def test_materialization_metadata_has_no_raw_json(demo: Demo):
    """A dict or list shown as JSON reads badly; tables, markdown and scalars are used instead."""
    raw = {
        (name, key)
        for name in ASSET_NAMES
        if name not in JSON_PENDING
        for event in demo.result.asset_materializations_for_node(name)
        for key, value in event.metadata.items()
        if isinstance(value, dg.JsonMetadataValue)
    }
    assert raw == set()


def test_every_asset_belongs_to_the_pipeline_job_as_the_ui_sees_it(demo: Demo):
    """The UI lists these job names per asset; it launches from an asset page with the first,
    Dagster's implicit `__ASSET_JOB`, which Definitions gives the pipeline job's executor."""
    answer = graphql(demo.url, JOB_NAMES_QUERY)
    jobs = {"/".join(n["assetKey"]["path"]): n["jobNames"] for n in answer["data"]["assetNodes"]}
    assert set(jobs) == set(ASSET_NAMES)
    assert all(PIPELINE_JOB_NAME in names for names in jobs.values())


# issue 20: a new user's first hour ------------------------------------------------------------

# A float shown with more than 4 significant digits (0.6666666666666666) is not rounded.
LONG_FLOAT = re.compile(r"\b\d+\.\d{5,}\b")
# The asset Events page's metadata panel: it scrolls sideways when a value is too wide.
METADATA_PANEL = "[class*='AssetEventMetadataEntriesTable_assetEventMetadata']"
LINEAGE_VIEWPORT = {"width": 2560, "height": 1440}
# The metadata rows (key, value, and an empty third column) whose value ends past the panel's
# right edge: what the panel cuts off, and the width it would need.
VALUES_CUT_OFF = """
panel => {
  const edge = panel.getBoundingClientRect().right;
  const rows = Array.from(panel.querySelector('table').rows);
  return rows
    .filter(row => row.cells.length > 1 && row.cells[1].getBoundingClientRect().right > edge + 1)
    .map(row => [row.cells[0].innerText, Math.round(row.cells[1].getBoundingClientRect().right - edge)]);
}
"""


def test_the_drop_page_opens_through_its_link_on_the_asset_page(demo: Demo, browser):
    """Item 1: `page_url` is an http link to `make ui`'s reports server, and it opens."""
    watched = Watched(browser, demo.url)
    page = watched.open(f"/assets/drop_page?view=events&partition={DROP}", "Metadata")
    target = f"{demo.server.reports_url}/{DROP}/index.html"
    link = page.get_by_role("link", name=target, exact=True)
    with page.context.expect_page() as opened:
        link.click()
    drop_page = opened.value
    drop_page.wait_for_load_state("networkidle")
    assert drop_page.url == target
    assert DROP in drop_page.title()
    shown = _images_shown(drop_page) + drop_page.locator("img").evaluate_all(
        "images => images.map(i => i.complete ? i.naturalWidth : 0)"
    )
    assert shown and all(width > 0 for width in shown), shown  # thumbnails come over http too
    drop_page.screenshot(path=demo.shots / "drop-page-through-its-link.png", full_page=True)
    assert watched.errors == []


def _check_page(watched: Watched, asset: str, check: str) -> sync_api.Page:
    page = watched.open(f"/assets/{asset}?view=checks&checkDetail={check}", "Latest execution")
    page.get_by_text("outcome", exact=True).first.wait_for(timeout=30_000)
    watched.shoot(watched.shots / f"check-{asset}-{check}.png")
    return page


def test_a_warning_check_page_names_the_drop_and_shows_paths_and_rounded_values(
    demo: Demo, browser
):
    """Item 3: the drop in the description, a warning called one, the offending sample a table
    of file paths (not 64-character ids), no unrounded float anywhere on the page."""
    watched = Watched(browser, demo.url, demo.shots)
    page = _check_page(watched, "label_agreement", "clip_vlm_agreement")
    body = page.inner_text("body")
    assert f"drop {DROP} · warning: scenery:" in body
    assert "warning: worth a look, the run goes on" in body
    sample = page.locator("tr", has=page.get_by_text("offending_sample", exact=True)).last
    cells = sample.locator("td td").all_inner_texts()
    assert any(re.fullmatch(rf"{DROP}/[\w.-]+\.(jpg|png)", cell) for cell in cells), cells
    assert not re.search(r"\b[0-9a-f]{64}\b", body), "an image id where a path belongs"
    assert not LONG_FLOAT.search(body), LONG_FLOAT.search(body)
    assert watched.visible_errors() == [] and watched.errors == []


def test_a_check_with_too_few_images_says_it_skipped(demo: Demo, browser):
    """Item 6: the demo's 7 images are fewer than the 10 the collapse guard needs."""
    watched = Watched(browser, demo.url, demo.shots)
    for asset, check in (
        ("clip_zero_shot", "zero_shot_label_collapse"),
        ("clip_zero_shot", "label_drift"),
        ("vlm_extractions", "extraction_people_consistency"),
    ):
        page = _check_page(watched, asset, check)
        body = page.inner_text("body")
        assert f"drop {DROP} · skipped: too few images (" in body, (check, body[:2000])
        assert "skipped: too few images (7 of 10 needed)" in body or (
            "skipped: too few images in earlier drops (0 of 10 needed)" in body
        ), check
        assert "Failed" not in body, check  # never a warning on too little data
    assert watched.visible_errors() == [] and watched.errors == []


def test_no_metadata_is_wider_than_its_panel(demo: Demo, browser):
    """Item 4: every asset's metadata fits its panel: no value cut off at the right edge."""
    watched = Watched(browser, demo.url, demo.shots)
    too_wide = {}
    for name in ASSET_NAMES:
        page = watched.open(f"/assets/{name}?view=events&partition={DROP}", "Metadata")
        panel = page.locator(METADATA_PANEL).first
        cut = panel.evaluate(VALUES_CUT_OFF)
        if cut:
            too_wide[name] = cut
    assert too_wide == {}
    text = watched.open(f"/assets/evaluation?view=events&partition={DROP}", "Metadata")
    assert str(REPO_ROOT) not in text.inner_text(METADATA_PANEL)  # no absolute path per row


def test_the_lineage_page_shows_every_asset_with_its_check_badges(demo: Demo, browser):
    """Item 7: Dagster's global lineage opens on the assets themselves (one asset group), each
    with its checks' badge, at a desktop size and without zooming."""
    watched = Watched(browser, demo.url, demo.shots)
    watched.page.set_viewport_size(LINEAGE_VIEWPORT)
    page = watched.page
    page.goto(f"{demo.url}/asset-groups")
    page.get_by_text("Asset checks").first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    badges = page.get_by_text(re.compile(r"^\d+ / \d+ Passed$"))
    badges.nth(len(ASSET_NAMES) - 1).wait_for(timeout=60_000)  # live data arrives after
    page.screenshot(path=demo.shots / "lineage.png")
    assert page.get_by_text("Asset checks", exact=True).count() == len(ASSET_NAMES)
    assert badges.count() == len(ASSET_NAMES)
    for name in ASSET_NAMES:
        assert page.get_by_text(name, exact=True).last.is_visible(), name
    assert watched.errors == []


SENSOR_SELECTOR = {
    "repositoryLocationName": "image_pipeline",
    "repositoryName": "__repository__",
    "sensorName": SENSOR_NAME,
}
START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on PythonError { message } }
}
"""
SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { ticks(limit: 5) { status skipReason } } }
  }
}
"""


def test_the_sensor_page_says_what_the_sensor_waits_for(demo: Demo, browser):
    """Issue 20 item 5: each tick's one-line status is on the sensor's own page, not only in the
    terminal. The sensor starts stopped here (the demo ran the chain itself); started, its first
    tick finds `samples` already ingested and says so."""
    started = graphql(demo.url, START_SENSOR, {"selector": SENSOR_SELECTOR})
    assert started["data"]["startSensor"]["__typename"] == "Sensor", started
    reasons: list[str] = []
    deadline = time.monotonic() + 120
    while not reasons and time.monotonic() < deadline:
        answer = graphql(demo.url, SENSOR_TICKS, {"selector": SENSOR_SELECTOR})
        ticks = answer["data"]["sensorOrError"]["sensorState"]["ticks"]
        reasons = [tick["skipReason"] for tick in ticks if tick["skipReason"]]
        time.sleep(2)
    assert reasons, "the daemon ticked no skip within 120 s"
    assert reasons[0].startswith("watching 1 drop"), reasons[0]

    watched = Watched(browser, demo.url)
    path = f"/locations/__repository__@image_pipeline/sensors/{SENSOR_NAME}"
    page = watched.open(path, "Latest tick")
    page.screenshot(path=demo.shots / "sensor.png")
    # The tick table's Result opens the tick's details, where Dagster shows the skip reason.
    page.locator("table").get_by_text("0 runs requested").last.click()
    dialog = page.get_by_role("dialog").last
    dialog.get_by_text(reasons[0], exact=False).first.wait_for(timeout=30_000)
    dialog.screenshot(path=demo.shots / "sensor-tick.png")
    assert not watched.errors, watched.errors


def test_stopping_make_ui_stops_dagster_and_the_reports_server(demo: Demo):
    """Item 1's job control: Ctrl-C (SIGINT to the launcher's group) stops `dagster dev`, its
    children and the reports server; nothing is left. Runs last: it ends the module's server."""
    server = demo.server
    children = descendants(server.process.pid)
    assert children and port_open(server.reports_port)
    server.stop(signal.SIGINT)
    assert server.process.returncode is not None
    assert not port_open(server.reports_port)
    assert not port_open(int(demo.url.rsplit(":", 1)[1]))
    deadline = time.monotonic() + 30  # orphan watchers notice their parent is gone
    while (left := [pid for pid in children if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {pid: command_line(pid) for pid in left} == {}
