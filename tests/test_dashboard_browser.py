"""The dashboard in a real headless browser (issue 14): Debian's chromium driven by Playwright
(`executable_path`, nothing downloaded). Screenshots go to var/test-output/."""
from __future__ import annotations

import pytest

from conftest import ROOT, SQLITE_ONLY, need_tool
from helpers.http import TOKEN, http_daemon

OUT = ROOT / "var" / "test-output"


@SQLITE_ONLY
def test_log_in_see_a_failed_job_retry_it_and_see_it_done(make_daemon) -> None:
    chromium = need_tool("/usr/bin/chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    d, port = http_daemon(make_daemon, {"flaky": {}, "record": {}})
    bad = d.submit("flaky succeed_on:2")
    assert d.wait_job(bad)["state"] == "failed"
    evil = d.submit('record note:"<script>window.pwned=1</script>"')
    d.wait_job(evil)
    OUT.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            dialogs: list[str] = []
            page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
            page.goto(base + "/")
            assert page.url.endswith("/login")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            sync_api.expect(page.locator("main")).to_contain_text("flaky")
            page.screenshot(path=str(OUT / "dashboard-overview.png"), full_page=True)

            page.goto(base + "/jobs?state=failed")
            page.click(f"a[href='/jobs/{bad}']")
            sync_api.expect(page.locator("h1")).to_contain_text("failed")
            sync_api.expect(page.locator("#why")).to_contain_text("has ended failed")
            page.screenshot(path=str(OUT / "dashboard-job.png"), full_page=True)
            page.click("#retry")
            sync_api.expect(page.locator("h1")).to_contain_text(f"Retry job {bad}?")
            page.click("#confirm")
            sync_api.expect(page.locator("#outcome")).to_contain_text(f"job {bad} is queued again")
            page.click("#back")
            # the page refreshes itself: no reload here
            sync_api.expect(page.locator("h1")).to_contain_text("done", timeout=30_000)

            # an action without the CSRF token is refused, from the logged-in browser itself
            status = page.evaluate("""async (id) => (await fetch('/action', {method: 'POST',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'action=retry&id=' + id})).status""", bad)
            assert status == 403

            page.goto(f"{base}/jobs/{evil}")
            sync_api.expect(page.locator("main")).to_contain_text("<script>window.pwned=1</script>")
            assert page.evaluate("window.pwned") is None and not dialogs
        finally:
            browser.close()
    assert (OUT / "dashboard-overview.png").stat().st_size > 1000
    assert (OUT / "dashboard-job.png").stat().st_size > 1000
