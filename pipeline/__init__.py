"""RL fine-tuning pipeline for text-to-image diffusion models.

Environment defaults are set here, before torch is imported anywhere, because OpenMP's
active spin-wait stalls training on this 2-core machine (docs/design.md) and the network is closed
(analytics would hang or spam errors).
"""
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_ENV_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run ... at" lines in a stage's log
}
for _key, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("MPLCONFIGDIR", str(PROJECT_ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".cache" / "prefect"))
for _home in ("PREFECT_HOME", "MPLCONFIGDIR"):
    try:
        Path(os.environ[_home]).mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only checkout: the libraries fall back to their own defaults
        pass
