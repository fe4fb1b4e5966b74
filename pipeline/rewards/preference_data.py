"""Pairs for the learned preference model, from cheap sources, and their panel votes.

Panel labels are cheap in the shapes world, so the reward model can be trained on tens of
thousands of pairs (docs/experiments.md E30). Three sources, each a pair of images for one prompt
of the preference corpus:

- `group`: two base samples of the prompt (stochastic DDIM): the differences RL will see first;
- `stream`: two renders of scenes that satisfy the prompt, each with the pretraining stream's
  defects (`world.stream`) at its rate: what the data's defects cost;
- `mismatch`: a render that satisfies the prompt against one of another prompt's scene: what
  prompt match is worth.

Each pair is labelled by `votes` raters drawn at random from the panel (one Bradley-Terry choice
each); the model is fitted to the share of votes, as one would pool several human raters.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.progress import Progress
from pipeline.world.panel import RaterPanel
from pipeline.world.attributes import spec_of
from pipeline.world.realism import Realism, render_with_defect
from pipeline.world.scene import PromptSpec, sample_scene

SOURCES = ("group", "stream", "mismatch")


def _spec(record: dict | str) -> PromptSpec:
    return spec_of(_prompt(record), record if isinstance(record, dict) else None)


def _prompt(record: dict | str) -> str:
    return record["prompt"] if isinstance(record, dict) else str(record)


def render_pairs(records: Sequence, n: int, realism: Realism, resolution: int, seed: int,
                 mismatch: bool, progress: bool = False) -> dict:
    """`n` pairs of renders for prompts drawn from `records` (seeded). Without `mismatch`, both
    images satisfy the prompt (with stream defects); with it, image b shows another prompt's scene."""
    rng = np.random.default_rng([seed, 17, int(mismatch)])
    images_a, images_b, prompts = [], [], []
    bar = Progress(f"rendering {'mismatch' if mismatch else 'stream'} pairs", n, unit="pair", enabled=progress)
    for _ in range(n):
        record = records[int(rng.integers(len(records)))]
        spec = _spec(record)
        other = _spec(records[int(rng.integers(len(records)))]) if mismatch else spec
        a, _, _ = render_with_defect(sample_scene(rng, spec), rng, realism, resolution)
        b, _, _ = render_with_defect(sample_scene(rng, other), rng, realism, resolution)
        if rng.random() < 0.5:  # the matching image is not always a
            a, b = b, a
        images_a.append(a), images_b.append(b), prompts.append(_prompt(record))
        bar.update()
    bar.close()
    empty = np.zeros((0, resolution, resolution, 3), np.uint8)
    return {"images_a": torch.from_numpy(np.stack(images_a) if n else empty),
            "images_b": torch.from_numpy(np.stack(images_b) if n else empty), "prompts": prompts}


def group_pairs(images: torch.Tensor, prompts: Sequence[str], group_size: int) -> dict:
    """Every pair within consecutive groups of `group_size` samples of one prompt."""
    a, b, texts = [], [], []
    for start in range(0, len(prompts) - group_size + 1, group_size):
        for i in range(start, start + group_size):
            for j in range(i + 1, start + group_size):
                a.append(i), b.append(j), texts.append(prompts[i])
    return {"images_a": images[a], "images_b": images[b], "prompts": texts}


def concat_pairs(parts: dict[str, dict]) -> dict:
    """One dataset from several sources, with a `source` name per pair."""
    parts = {name: part for name, part in parts.items() if len(part["prompts"])}
    return {"images_a": torch.cat([p["images_a"] for p in parts.values()]),
            "images_b": torch.cat([p["images_b"] for p in parts.values()]),
            "prompts": [t for p in parts.values() for t in p["prompts"]],
            "source": [name for name, p in parts.items() for _ in p["prompts"]]}


def win_probabilities(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                      progress: bool = False, chunk: int = 2048) -> torch.Tensor:
    """The panel's `win_probabilities` ([raters, N]) in chunks of pairs, with progress lines: labelling
    tens of thousands of pairs takes minutes on a CPU. Each pair's value does not depend on the chunk."""
    prompts = list(prompts)
    bar = Progress("labelling pairs", len(prompts), unit="pair", enabled=progress)
    parts = []
    for start in range(0, len(prompts), chunk):
        stop = start + chunk
        parts.append(panel.win_probabilities(images_a[start:stop], images_b[start:stop], prompts[start:stop]))
        bar.update(len(prompts[start:stop]))
    bar.close()
    return torch.cat(parts, 1) if parts else panel.win_probabilities(images_a, images_b, prompts)


def vote(panel: RaterPanel, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence, votes: int,
         generator: torch.Generator, probabilities: torch.Tensor | None = None) -> torch.Tensor:
    """Share of `votes` random raters (one Bradley-Terry choice each) preferring a: float [N].
    `probabilities`: the pairs' `win_probabilities`, when already computed."""
    if probabilities is None:
        probabilities = panel.win_probabilities(images_a, images_b, list(prompts))
    return torch.stack([panel.draw_labels(probabilities, generator).float() for _ in range(votes)]).mean(0)


def source_counts(pairs: int, shares: dict[str, float]) -> dict[str, int]:
    """`pairs` split by the sources' shares (largest remainder, so the counts sum to `pairs`)."""
    total = sum(shares.values())
    exact = {name: pairs * share / total for name, share in shares.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[: pairs - sum(counts.values())]:
        counts[name] += 1
    return counts


def sample_group_pairs(model, records: Sequence, n: int, group_size: int, seed: int, *, steps: int,
                       guidance: float, batch_size: int, progress: bool = False) -> dict:
    """`n` pairs from groups of `group_size` base samples (stochastic DDIM, eta 1) of seeded prompts."""
    from pipeline.sampling import sample_images

    per_group = group_size * (group_size - 1) // 2
    groups = -(-n // per_group) if n else 0
    rng = np.random.default_rng([seed, 3])
    texts = [_prompt(records[int(i)]) for i in rng.integers(0, len(records), size=groups)]
    prompts = [t for t in texts for _ in range(group_size)]
    seeds = rng.choice(2**31 - 1, size=len(prompts), replace=False).astype(int).tolist()
    images = sample_images(model, prompts, seeds, steps=steps, guidance=guidance, eta=1.0, batch_size=batch_size,
                           progress=progress)
    pairs = group_pairs(images, prompts, group_size)
    return {key: value[:n] for key, value in pairs.items()}


def build_pairs(model, records: Sequence, reward_params, sampling, realism: Realism, resolution: int, seed: int,
                progress: bool = False) -> dict:
    """The reward model's pairs from every source, in the shares `reward_params.sources` asks for."""
    if not records:
        raise ValueError("the reward model needs at least one preference prompt")
    counts = source_counts(reward_params.pairs, reward_params.sources)
    parts = {}
    if counts.get("group"):
        parts["group"] = sample_group_pairs(model, records, counts["group"], reward_params.group_size, seed,
                                            steps=sampling.steps, guidance=sampling.guidance,
                                            batch_size=sampling.batch_size, progress=progress)
    for name in ("stream", "mismatch"):
        if counts.get(name):
            parts[name] = render_pairs(records, counts[name], realism, resolution, seed, mismatch=name == "mismatch",
                                       progress=progress)
    return concat_pairs(parts)
