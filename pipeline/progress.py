"""Progress of a long loop for the person waiting on it: a tqdm bar on a terminal, and in a log
(`dvc repro`, which runs stages with `--no-progress`; CI; a file) a timestamped line about every
10% of the work and at least once a minute:

    [14:03:27] pretrain: step 400/2000 (20%), loss 0.0412, 2m10s elapsed, ETA 8m40s

`set_bars(False)` (the stages' `--no-progress`) turns bars off for the whole process, the
libraries' own bars (transformers' "Writing model shards") included; lines stay on.
"""
from __future__ import annotations

import os
import sys
import time

_PROCESS = {"bars": True, "stage": ""}
LINE_FRACTION = 0.1  # a line at every tenth of the work ...
QUIET_SECONDS = 60.0  # ... and at least once a minute


def set_bars(on: bool, stage: str = "") -> None:
    """Bars (on a terminal) or lines only, for every Progress of this process; lines of a loop whose
    label does not name `stage` get it in front ("reward_model, sampling: ...")."""
    _PROCESS.update(bars=on, stage=stage)
    if not on:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers and diffusers load
        for module in ("transformers.utils.logging", "diffusers.utils.logging"):
            if module in sys.modules:
                sys.modules[module].disable_progress_bar()


def duration(seconds: float) -> str:
    """'45s', '2m10s', '1h05m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Counts `total` units of work from `initial` (a resumed run's start). `update(n, **values)`
    adds n units and keeps the latest values (a loss, a reward per task) for the next line or bar.
    With `enabled` false it is silent (inner loops, library calls that report nothing)."""

    def __init__(self, label: str, total: int, *, initial: int = 0, unit: str = "step", enabled: bool = True,
                 clock=time.monotonic, stream=None):
        self.label, self.total, self.unit, self.clock = label, max(0, int(total)), unit, clock
        self.done = self.initial = int(initial)
        self.values: dict = {}
        self.began = self.last_line = clock()
        self.next_mark = self._mark_after(self.done)
        self.stream = stream
        self.bar = None
        self.lines = enabled and not (_PROCESS["bars"] and sys.stderr.isatty())
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, desc=label, unit=unit)
        elif self.lines and self.total > self.initial:
            start = f"resuming at {unit} {self.initial} of {self.total}" if self.initial else \
                f"{self.total} {unit}{'s' * (self.total != 1)} to go"
            self._print(start)

    def _mark_after(self, done: int) -> float:
        step = max(1.0, LINE_FRACTION * self.total)
        return (int(done / step) + 1) * step

    def _print(self, text: str) -> None:
        stage = _PROCESS["stage"]
        label = self.label if not stage or self.label.startswith(stage) else f"{stage}, {self.label}"
        print(f"[{time.strftime('%H:%M:%S')}] {label}: {text}", file=self.stream or sys.stdout, flush=True)

    def update(self, n: int = 1, **values) -> None:
        self.done += n
        self.values.update(values)
        if self.bar is not None:
            self.bar.update(n)
            if values:
                self.bar.set_postfix({k: _value(v) for k, v in self.values.items()}, refresh=False)
            return
        if not self.lines:
            return
        now = self.clock()
        per_unit = (now - self.began) / max(1, self.done - self.initial)  # a line now if the next would be late
        if self.done >= self.next_mark or self.done >= self.total or now - self.last_line + per_unit > QUIET_SECONDS:
            self.next_mark = self._mark_after(self.done)
            self.last_line = now
            self._print(self.line(now))

    def line(self, now: float) -> str:
        """'step 400/2000 (20%), loss 0.0412, 2m10s elapsed, ETA 8m40s'."""
        share = self.done / self.total if self.total else 1.0
        parts = [f"{self.unit} {self.done}/{self.total} ({share:.0%})"]
        parts += [f"{key} {_value(value)}" for key, value in self.values.items()]
        elapsed = now - self.began
        parts.append(f"{duration(elapsed)} elapsed")
        made = self.done - self.initial
        if 0 < made and self.done < self.total:
            parts.append(f"ETA {duration(elapsed / made * (self.total - self.done))}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
