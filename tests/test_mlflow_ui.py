"""The MLflow UI, served by a real `mlflow server`, shows a pipeline run (checked in headless Chromium)."""
from __future__ import annotations

import time
import uuid

import pytest

from pipeline.tracking import StageRun
from tests.browser import open_page, require_chromium
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow

# The UI asks for the signed-in user; a server without the basic-auth app answers 404. Harmless.
TOLERATED_ERRORS = ("/ajax-api/2.0/mlflow/users/current - Failed to load resource",)


def open_until(url: str, text: str, screenshot, budget_s: float = 30.0) -> tuple[list[str], str]:
    """Open `url` until `text` is in the page (the single-page app renders after load), waiting
    longer each time, for about `budget_s` seconds; return (console errors, page text) of the last try."""
    deadline = time.monotonic() + budget_s
    settle_s = 2.0
    while True:
        errors, _, page = open_page(url, screenshot=screenshot, settle_s=settle_s)
        if text in page or time.monotonic() + 2 * settle_s > deadline:
            return errors, page
        settle_s *= 2


def test_experiment_page_lists_the_pipeline_run(tmp_path, monkeypatch):
    require_chromium()
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        group = f"ui-check-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("PIPELINE_RUN_GROUP", group)
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        with StageRun("evaluate", {"seed": 0}) as run:
            run.log_metrics({"win_rate/composition": 0.6})
        assert run.run_id and run.buffer_path is None  # logged to the server, not buffered

        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient(server.url).get_run(run.run_id).info.experiment_id
        # The experiment's own URL opens MLflow 3's GenAI overview (traces); its runs are under /runs.
        screenshot = tmp_path / "mlflow-ui.png"
        errors, text = open_until(f"{server.url}/#/experiments/{experiment_id}/runs", group, screenshot)
    finally:
        server.stop()
    assert group in text, text[:2000]  # the parent run; the stage runs are nested under it
    assert [e for e in errors if not any(t in e for t in TOLERATED_ERRORS)] == []
    assert screenshot.stat().st_size > 10_000
