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


def open_until(url: str, texts: tuple[str, ...], screenshot, budget_s: float = 45.0) -> tuple[list[str], str]:
    """Open `url` until all `texts` are in the page (the single-page app renders after load), waiting
    longer each time, for about `budget_s` seconds; return (console errors, page text) of the last try.
    The window is wide: the runs table draws only the columns in view."""
    deadline = time.monotonic() + budget_s
    settle_s = 2.0
    while True:
        errors, _, page = open_page(url, screenshot=screenshot, settle_s=settle_s, width=3200)
        if all(text in page for text in texts) or time.monotonic() + 2 * settle_s > deadline:
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
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        with StageRun("finetune", {"seed": 0}) as run:
            run.log_metrics({"composition/reward_mean": 0.6})
            run.log_model(model, f"model-{group}")  # a logged model fills the runs table's Models column
        assert run.run_id and run.buffer_path is None  # logged to the server, not buffered

        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient(server.url).get_run(run.run_id).info.experiment_id
        # The experiment's own URL opens MLflow 3's GenAI overview (traces); its runs are under /runs.
        screenshot = tmp_path / "mlflow-ui.png"
        errors, text = open_until(f"{server.url}/#/experiments/{experiment_id}/runs", (group,), screenshot)
        # The stage's run lists its logged model (so does its row's Models column, once the parent is expanded).
        run_errors, run_page = open_until(f"{server.url}/#/experiments/{experiment_id}/runs/{run.run_id}",
                                          (f"model-{group}",), tmp_path / "mlflow-run.png")
    finally:
        server.stop()
    assert group in text, text[:2000]  # the parent run; the stage runs are nested under it
    assert f"model-{group}" in run_page, run_page[:2000]
    assert [e for e in errors + run_errors if not any(t in e for t in TOLERATED_ERRORS)] == []
    assert screenshot.stat().st_size > 10_000
