"""`threads: auto` and `model.mixed_precision: auto`: what they resolve to, once, when params are read
(pipeline/machine.py, pipeline/config.py), and that everything after sees the resolved values."""
from __future__ import annotations

import pytest
import yaml

from pipeline import machine
from pipeline.config import parse_params
from pipeline.errors import ParamsError
from tests.conftest import SMOKE_PARAMS


def smoke(**top) -> dict:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw.update(top)
    return raw


def test_auto_threads_are_this_processs_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    assert machine.auto_threads() == 2
    monkeypatch.setattr(machine, "available_cores", lambda: 96)
    assert machine.auto_threads() == machine.MAX_AUTO_THREADS  # the tiny model gains nothing from more
    monkeypatch.setattr(machine, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # `accelerate launch --num_processes 4`
    assert machine.auto_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert machine.auto_threads() == 1


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: 2 threads keep both partly busy
    assert machine._cgroup_cores(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert machine._cgroup_cores(cpu_max) is None
    assert machine._cgroup_cores(tmp_path / "absent") is None
    assert 1 <= machine.available_cores()


def test_bf16_only_where_the_cpu_has_native_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    assert machine.cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not machine.cpu_has_bf16(cpuinfo)
    assert not machine.cpu_has_bf16(tmp_path / "absent")
    assert machine.auto_mixed_precision("mps") == "no"


def test_params_resolve_auto_once_for_everything_after(monkeypatch):
    from pipeline.checkpoints import run_key

    monkeypatch.setattr(machine, "auto_threads", lambda: 3)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    raw = smoke(threads="auto")
    raw["model"]["mixed_precision"] = "auto"
    params = parse_params(raw)
    assert params.threads == 3 and params.model.mixed_precision == "bf16"
    assert params.model_dump()["threads"] == 3  # what MLflow logs
    raw = smoke(threads=3)
    raw["model"]["mixed_precision"] = "bf16"
    explicit = parse_params(raw)
    # The checkpoint run key holds the resolved numbers: a machine with other cores resumes nothing of this one's.
    assert run_key("pretrain", params, params.model) == run_key("pretrain", explicit, explicit.model)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    raw = smoke(threads="auto")
    raw["model"]["mixed_precision"] = "auto"
    assert parse_params(raw).model.mixed_precision == "no"


def test_the_default_params_ask_for_auto():
    from pipeline import PROJECT_ROOT

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert raw["threads"] == "auto" and raw["model"]["mixed_precision"] == "auto"


@pytest.mark.parametrize("value", [0, 65, True, "x", 2.5, "Auto"])
def test_a_bad_thread_count_is_one_clear_error(value):
    with pytest.raises(ParamsError, match=r"'threads' is .*expected a whole number from 1 to 64 or 'auto'"):
        parse_params(smoke(threads=value))
