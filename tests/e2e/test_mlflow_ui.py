"""The review step in a real browser: the MLflow UI on the pipeline's store, in headless Debian Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # CI keeps this folder
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # a React app on 2 busy cores
STAGE_RUNS = ["prepare-vgg16-samples", "import-arbitrary-magenta_lite", "train-starry-magenta_lite",
              "export-starry-magenta_lite", "evaluate-starry-magenta_lite"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(dvc_pipeline):
    """`mlflow server` on a free loopback port with the pipeline's store (as the README says)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(dvc_pipeline.path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{dvc_pipeline.path / 'mlflow.db'}"],
        cwd=dvc_pipeline.path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer on {url}: {(dvc_pipeline.path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, started by this fixture
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_mlflow_ui_shows_pipeline_run_stage_runs_latency_and_grid(dvc_pipeline, mlflow_server):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    mlflow.set_tracking_uri(f"sqlite:///{dvc_pipeline.path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stylepipe"], output_format="list")
    pipeline = next(r for r in runs if r.info.run_name == "pipeline-starry-magenta_lite")
    evaluate = next(r for r in runs if r.info.run_name == "evaluate-starry-magenta_lite")
    experiment = pipeline.info.experiment_id
    latency_key = next(k for k in sorted(evaluate.data.metrics) if k.startswith("latency_ms.tflite_fp16."))
    ARTIFACTS.mkdir(exist_ok=True)
    assert pipeline.info.status == "FINISHED"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            # The experiment's training runs: the pipeline run, expanded to show its stage runs.
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs")
            pipeline_cell = page.get_by_role("gridcell").filter(has_text="pipeline-starry-magenta_lite")
            expect(pipeline_cell).to_be_visible()
            _close_assistant(page)
            pipeline_cell.get_by_role("button").first.click()  # stage runs are nested under it, collapsed
            for stage in STAGE_RUNS:
                expect(page.get_by_role("gridcell").filter(has_text=stage)).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "mlflow_pipeline_runs.png"))

            # The evaluation run's page: a latency metric with its value, then the stylized grid.
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{evaluate.info.run_id}")
            expect(page.get_by_text("evaluate-starry-magenta_lite").first).to_be_visible()
            expect(page.get_by_role("link", name="pipeline-starry-magenta_lite")).to_be_visible()  # its parent run
            metric_row = page.get_by_role("row").filter(has_text=latency_key)
            expect(metric_row).to_contain_text(str(evaluate.data.metrics[latency_key])[:5])
            _close_assistant(page)
            page.screenshot(path=str(ARTIFACTS / "mlflow_run_page.png"), full_page=True)
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs/{evaluate.info.run_id}/artifacts/stylized_grid.png")
            expect(page.get_by_text("stylized_grid.png").first).to_be_visible()
            grid = page.locator("img[src^='blob:']").first  # the artifact as the UI fetched it
            expect(grid).to_be_visible()
            width = grid.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 200, f"stylized grid not rendered (naturalWidth {width})"
            _close_assistant(page)
            page.screenshot(path=str(ARTIFACTS / "mlflow_stylized_grid.png"))
        finally:
            browser.close()


def _close_assistant(page) -> None:
    """Close the MLflow Assistant side panel if it is open (it hides part of the page in screenshots)."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() == 1 and close.is_visible():
        close.click()
