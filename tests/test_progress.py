"""Progress of long loops in a log (pipeline/progress.py): a timestamped line about every 10% and at
least once a minute, with the step, the latest values, the time elapsed and left; bars on a terminal only."""
from __future__ import annotations

import io
import re

import pytest

from pipeline import progress
from pipeline.progress import Progress, duration

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<label>[^:]+): (?P<text>.*)$")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _lines(monkeypatch):
    monkeypatch.setattr(progress, "_PROCESS", {"bars": False, "stage": ""})


def run(total, seconds_per_step, initial=0, **values):
    out, clock = io.StringIO(), Clock()
    bar = Progress("pretrain", total, initial=initial, clock=clock, stream=out)
    for _ in range(initial, total):
        clock.now += seconds_per_step
        bar.update(1, **values)
    bar.close()
    return [LINE.match(line).groupdict() for line in out.getvalue().splitlines()]


def test_a_line_about_every_tenth_with_values_elapsed_and_eta():
    lines = run(2000, 0.25, loss=0.0412345)
    assert all(line["label"] == "pretrain" for line in lines)
    assert lines[0]["text"] == "2000 steps to go"
    assert len(lines) == 1 + 10
    assert lines[1]["text"] == "step 200/2000 (10%), loss 0.04123, 50s elapsed, ETA 7m30s"
    assert lines[-1]["text"] == "step 2000/2000 (100%), loss 0.04123, 8m20s elapsed"


def test_at_least_a_line_a_minute_on_a_slow_loop():
    lines = run(20, 45.0)  # 10% is two steps, 90 s: waiting for it would leave the log quiet for too long
    assert len(lines) - 1 == 20
    lines = run(10, 130.0)
    assert [line["text"].split(",")[0] for line in lines[1:]] == [f"step {n}/10 ({n}0%)" for n in range(1, 11)]


def test_a_resumed_run_says_so_and_times_what_is_left():
    lines = run(100, 1.0, initial=50)
    assert lines[0]["text"] == "resuming at step 50 of 100"
    assert lines[1]["text"].startswith("step 60/100 (60%)") and lines[1]["text"].endswith("10s elapsed, ETA 40s")


def test_a_stage_names_the_loops_of_library_calls(monkeypatch):
    monkeypatch.setattr(progress, "_PROCESS", {"bars": False, "stage": "reward_model"})
    out = io.StringIO()
    Progress("sampling", 4, unit="image", stream=out).update(4)
    assert [LINE.match(line)["label"] for line in out.getvalue().splitlines()] == ["reward_model, sampling"] * 2


def test_silent_when_disabled_and_a_bar_only_on_a_terminal(monkeypatch):
    out = io.StringIO()
    Progress("inner", 10, enabled=False, stream=out).update(10)
    assert out.getvalue() == ""
    monkeypatch.setattr(progress, "_PROCESS", {"bars": True, "stage": ""})
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    bar = Progress("pretrain", 10, stream=out)  # bars allowed, but the output is not a terminal: lines
    assert bar.bar is None and bar.lines
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    bar = Progress("pretrain", 10, stream=out)
    assert bar.bar is not None and not bar.lines
    bar.close()


def test_durations():
    assert [duration(s) for s in (0, 45.4, 130, 3725)] == ["0s", "45s", "2m10s", "1h02m"]
