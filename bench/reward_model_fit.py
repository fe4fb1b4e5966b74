"""Benchmark the preference model's training step: float32 against bf16 autocast, side by side.

The reward_model stage trains under the base model's `model.mixed_precision`. This measures what that
buys on this machine: the same pairs (stream and mismatch renders of the world), the same initial
weights and batches, the two precisions interleaved over several rounds so that a busy neighbour
slows both alike. Prints seconds per optimiser step for each and their ratio.

    python bench/reward_model_fit.py [--pairs 2048] [--batch 64] [--rounds 3] [--channels 32,64,128] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.rewards.preference import PreferenceModel  # noqa: E402
from pipeline.rewards.preference_data import render_pairs  # noqa: E402
from pipeline.rewards.preference_training import _pair_scores, bradley_terry_loss  # noqa: E402
from pipeline.runtime import autocast, configure  # noqa: E402
from pipeline.world.captions import caption_for_spec  # noqa: E402
from pipeline.world.realism import Realism  # noqa: E402
from pipeline.world.scene import sample_spec  # noqa: E402


def pairs(n: int) -> dict:
    rng = np.random.default_rng(0)
    records = [caption_for_spec(sample_spec(rng, ("single", "composition")[i % 2])) for i in range(200)]
    realism = Realism(defect_rate=0.6)
    half = render_pairs(records, n // 2, realism, 24, 0, mismatch=False)
    other = render_pairs(records, n - n // 2, realism, 24, 0, mismatch=True)
    return {key: torch.cat([half[key], other[key]]) if key != "prompts" else half[key] + other[key] for key in half}


def seconds_per_step(data: dict, precision: str, channels: tuple[int, ...], batch: int) -> float:
    torch.manual_seed(0)
    model = PreferenceModel(channels=channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.rand(len(data["prompts"]), generator=torch.Generator().manual_seed(1))
    steps, began = 0, time.perf_counter()
    for start in range(0, len(data["prompts"]), batch):
        rows = slice(start, start + batch)
        with autocast("cpu", precision):
            s_a, s_b = _pair_scores(model, data["images_a"][rows], data["images_b"][rows], data["prompts"][rows])
        loss = bradley_terry_loss(s_a.float(), s_b.float(), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return (time.perf_counter() - began) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--channels", default="32,64,128")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    configure(0, args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    data = pairs(args.pairs)
    times: dict[str, list[float]] = {"no": [], "bf16": []}
    for _ in range(args.rounds):
        for precision in times:
            times[precision].append(seconds_per_step(data, precision, channels, args.batch))
    best = {precision: min(values) for precision, values in times.items()}
    print(f"preference model {channels}, batch {args.batch} pairs, {args.threads} threads, best of {args.rounds}:")
    for precision, value in best.items():
        print(f"  {'float32' if precision == 'no' else precision}: {value * 1000:.1f} ms a step")
    print(f"  bf16 speed-up: {best['no'] / best['bf16']:.2f}x")


if __name__ == "__main__":
    main()
