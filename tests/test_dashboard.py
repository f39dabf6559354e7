"""The operations dashboard in headless Chromium: it loads, asks for the admin key, and follows a
job from running to completed by itself. The screenshot is kept in runs/test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.api.main import create_app
from service.core.db.session import session_scope
from service.domain.forget import request_forget
from service.domain.jobs import (
    BatchPolicy,
    claim_next_job,
    cut_batch,
    publish_and_complete,
    renew_lease,
)
from tests.service_support import (
    ADMIN_KEY,
    REQUIRED,
    LiveServer,
    make_settings,
    postgres_database,
    prepare_database,
    random_adapter,
    small_dataset,
    tiny_base_folder,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Chromium and its driver are needed (apt-get install chromium chromium-driver)"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_page_load_timeout(30)
    yield b
    b.quit()


def _text(browser, css: str) -> str:
    return browser.find_element("css selector", css).text


def test_the_dashboard_follows_a_job_to_completion(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    dataset = small_dataset(users=20, items=30, per_user=10)
    base = tiny_base_folder(dataset, tmp_path / "base")
    with postgres_database() as url:
        prepare_database(url, dataset, base)
        settings = make_settings(url, tmp_path / "data")
        with session_scope(url) as s:
            for user in ("3", "4"):
                request_forget(s, user, salt=settings.salt(), actor="test")
        with session_scope(url) as s:
            job_id = cut_batch(s, BatchPolicy(1, 0, 10), force=True).id
        with LiveServer(create_app(settings)) as server:
            wait = WebDriverWait(browser, 20, poll_frequency=0.2)
            browser.get(f"{server.url}/admin/dashboard")
            assert "e2urec" in browser.title
            wait.until(lambda b: "enter the admin key" in _text(b, "#error"))
            key = browser.find_element("css selector", "#key")
            key.send_keys(ADMIN_KEY, Keys.TAB)
            wait.until(lambda b: _text(b, "#pending") == "0")
            assert "2 scheduled" in _text(browser, "#counts")
            assert "oldest open request 0.00 of 30.0 days" in _text(browser, "#deadline")

            with session_scope(url) as s:  # a worker takes the job and reports progress
                claim_next_job(s, "dashboard-test", lease_seconds=60, max_attempts=3)
            with session_scope(url) as s:
                renew_lease(
                    s, job_id, "dashboard-test", 60, stage="unlearn", step=6, total=10, loss=0.4321
                )
            wait.until(lambda b: "unlearn" in _text(b, "#running"))
            assert "step 6/10" in _text(browser, "#running")
            assert "running" in _text(browser, "#jobs")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "dashboard-running.png"))

            adapter = random_adapter(base, settings.adapter_dir / "job-1", seed=1)
            from e2urec.adapter_files import read_adapter

            with session_scope(url) as s:  # ... and publishes
                publish_and_complete(
                    s,
                    job_id,
                    "dashboard-test",
                    base_model_id=1,
                    parent_id=None,
                    path=str(adapter),
                    checksum=read_adapter(adapter).checksum,
                    metrics={
                        "gate": {
                            "valid_auc_before": 0.71,
                            "valid_auc_after": 0.70,
                            "mia_auc_before": 0.61,
                            "mia_auc_after": 0.52,
                        }
                    },
                    probes=[],
                    signer=settings.signer(),
                    gate={},
                )
            wait.until(lambda b: "succeeded" in _text(b, "#jobs"))
            assert _text(browser, "#running") == "none"
            assert "adapter 1" in _text(browser, "#model")
            assert "0.610 → 0.520" in _text(browser, "#jobs")
            wait.until(lambda b: _text(b, "#requests tbody").count("completed") == 2)
            browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
