"""Drive the real Prefect UI (v1 UI of Prefect 3.8) with Playwright.

Uses the Debian-packaged Chromium at /usr/bin/chromium; Playwright's own
browser downloads are never used.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]
FLOW_RUN_PATH = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")
TERMINAL_CLASS = re.compile(r"\bstate--(completed|failed|crashed|cancelled)\b")
RELOAD_EVERY_S = 30.0


def _api(page: Page, ui_url: str, method: str, path: str, data: dict | None = None) -> object:
    """Call the Prefect REST API behind `ui_url` and return the decoded JSON body."""
    response = page.request.fetch(f"{ui_url}/api{path}", method=method, data=data)
    assert response.ok, f"{method} {path} -> HTTP {response.status}: {response.text()}"
    return response.json()


def _wait_terminal(page: Page, run_id: str, timeout_s: float) -> str:
    """Wait until the flow run page's state badge shows a terminal state; return its text.

    The page updates live; it is also reloaded every RELOAD_EVERY_S seconds in case
    polling stalls.
    """
    badge = page.locator("header .state-badge")
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            expect(badge).to_have_class(TERMINAL_CLASS, timeout=max(min(remaining, RELOAD_EVERY_S), 0.1) * 1000)
            return badge.inner_text().strip()
        except AssertionError:
            if time.monotonic() >= deadline:
                shown = badge.inner_text().strip() if badge.count() else "no state badge"
                raise AssertionError(
                    f"flow run {run_id} not finished after {timeout_s:.0f}s; UI shows {shown!r}"
                ) from None
            page.reload()


def _shoot_artifacts(page: Page, ui_url: str, run_id: str, screenshots: Path) -> None:
    """Screenshot the flow run's Artifacts tab, then each of its artifacts' own pages."""
    artifacts = _api(page, ui_url, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    panel = page.get_by_role("tabpanel")
    expect(panel.locator("a[href*='/artifacts/artifact/']")).to_have_count(len(artifacts))
    page.screenshot(path=screenshots / "04-artifacts-tab.png", full_page=True)
    for artifact in artifacts:
        page.goto(f"{ui_url}/artifacts/artifact/{artifact['id']}")
        expect(page.get_by_role("button", name="Show raw data")).to_be_visible()
        page.wait_for_load_state("networkidle")
        page.wait_for_function("Array.from(document.images).every(img => img.complete)")
        page.screenshot(path=screenshots / f"05-artifact-{artifact['key'] or artifact['id']}.png", full_page=True)


def _press_quick_run(page: Page, run_button, attempts: int = 3) -> str:
    """Run -> Quick run; the new flow run's id. A 503 is the server saying "busy, retry" (nothing
    was created), so the button is pressed again, as a person would; any other error fails."""
    for attempt in range(1, attempts + 1):
        run_button.click()
        with page.expect_response(
            lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
        ) as created:
            page.get_by_role("button", name="Quick run", exact=True).click()
        response = created.value
        if response.ok:
            return response.json()["id"]
        assert response.status == 503 and attempt < attempts, (
            f"create_flow_run -> HTTP {response.status}: {response.text()}"
        )
        page.keyboard.press("Escape")
        time.sleep(2)
    raise AssertionError("unreachable")


def quick_run(ui_url: str, flow_name: str, deployment_name: str, screenshots: Path, timeout_s: float = 300) -> str:
    """Quick-run a deployment through the Prefect UI and wait for the run to complete.

    Opens the deployment's page, presses Run -> Quick run, follows the toast's
    "View run" button to the new flow run's page and waits until its state badge
    shows a terminal state. Screenshots (deployment page, toast after quick run,
    completed flow run page, Artifacts tab, and each artifact's page) are saved
    into `screenshots`.

    Raises AssertionError if the run ends Failed/Crashed/Cancelled (or any non-Completed
    terminal state) or does not finish within `timeout_s`. Returns the flow run id.
    """
    ui_url = ui_url.rstrip("/")
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            deployment = _api(page, ui_url, "GET", f"/deployments/name/{quote(flow_name)}/{quote(deployment_name)}")
            page.goto(f"{ui_url}/deployments/deployment/{deployment['id']}")
            run_button = page.get_by_role("button", name="Run", exact=True)
            expect(run_button).to_be_visible()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=screenshots / "01-deployment.png")

            run_id = _press_quick_run(page, run_button)
            # This UI renders each toast twice, stacked; the last copy is the one on top.
            view_run = page.get_by_role("button", name="View run").last
            view_run.click(trial=True)  # waits for the toast to finish sliding in
            page.screenshot(path=screenshots / "02-quick-run.png")

            view_run.click()
            page.wait_for_url(FLOW_RUN_PATH)
            match = FLOW_RUN_PATH.search(page.url)
            assert match and match.group(1) == run_id, f"UI opened {page.url}, expected flow run {run_id}"
            try:
                state = _wait_terminal(page, run_id, timeout_s)
            finally:
                page.screenshot(path=screenshots / "03-flow-run.png")
            assert state == "Completed", f"flow run {run_id} ended {state!r} in the UI ({page.url})"

            _shoot_artifacts(page, ui_url, run_id, screenshots)
            return run_id
        finally:
            browser.close()
