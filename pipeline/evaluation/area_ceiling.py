"""How large can a faithful object be? The largest mean object area that images which match their
prompts exactly can have, read by the same detector the evaluation uses.

    python -m pipeline.evaluation.area_ceiling [--prompts data/prompts/single.eval.jsonl]

Each single-object prompt is rendered centred at box sides from 0.2 to 1.0; the largest
side the detector still reads exactly as the prompt (colour, shape, size, one object) gives that
prompt's ceiling. It tells whether a target on the area reward is within reach of faithful
images at all (docs/experiments.md E24).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.io import read_jsonl
from pipeline.world.attributes import spec_of
from pipeline.world.detect import detect, exact_match, object_area_fraction
from pipeline.world.render import render


@dataclass(frozen=True)
class Ceiling:
    prompt: str
    side: float | None  # the largest faithful box side (fraction of the image); None: none found
    area: float  # its mean object area (0 when none)


def prompt_ceiling(prompt: str, row: dict | None, resolution: int, sides: np.ndarray) -> Ceiling:
    spec = spec_of(prompt, row)
    if len(spec.objects) != 1:
        raise ValueError(f"{prompt!r}: expected a single-object prompt, got {len(spec.objects)} objects")
    target = spec.objects[0]
    best = Ceiling(prompt, None, 0.0)
    for side in sides:
        shape = SimpleNamespace(shape=target.shape, colour=target.colour, cx=0.5, cy=0.5, side=float(side))
        image = render(SimpleNamespace(objects=[shape]), resolution)
        if exact_match(detect(image), spec):
            area = object_area_fraction(image)
            if area > best.area:
                best = Ceiling(prompt, float(side), area)
    return best


def area_ceilings(rows: list[dict], resolution: int = 24, min_side: float = 0.2, step: float = 0.01) -> list[Ceiling]:
    sides = np.round(np.arange(min_side, 1.0 + step / 2, step), 6)
    return [prompt_ceiling(row["prompt"], row, resolution, sides) for row in rows]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, default=Path("data/prompts/single.eval.jsonl"))
    p.add_argument("--resolution", type=int, default=24)
    p.add_argument("--base-mean", type=float, help="the base model's mean area (eval.json reward.area.base)")
    p.add_argument("--base-std", type=float, help="its standard deviation (reward.area.base_std)")
    args = p.parse_args(argv)
    ceilings = area_ceilings(read_jsonl(args.prompts, required=("prompt",)), args.resolution)
    for c in ceilings:
        print(f"{c.prompt:40s} side {c.side if c.side is not None else '-':>5}  area {c.area:.3f}")
    mean = float(np.mean([c.area for c in ceilings]))
    line = f"faithful ceiling: mean area {mean:.3f} over {len(ceilings)} prompts"
    if args.base_mean is not None and args.base_std:
        line += f", {(mean - args.base_mean) / args.base_std:+.2f} base standard deviations"
    print(line)


if __name__ == "__main__":
    main()
