"""The prompts of each corpus (pipeline/corpora.py) with train/eval splits and held-out colour-shape
combinations.

Prompts naming a held-out colour-shape pair go to eval only and are marked `unseen`, as the paper
holds out objects. Small corpora cannot spare disjoint eval prompts; their manifest entry says so.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataFileError
from pipeline.corpora import COMPOSITION, CORPORA, DIVERSITY, PREFERENCE, SINGLE
from pipeline.params import PromptsParams
from pipeline.world.captions import caption_for_spec
from pipeline.world.scene import ObjectSpec, PromptSpec
from pipeline.world.vocab import COLOURS, CONJUNCTION, RELATIONS, SHAPES, SIZES

RECORD_KEYS = ("prompt", "task", "spec", "unseen")
MANIFEST = "manifest.json"  # the prompts stage's record of each corpus: sizes, and whether train/eval are disjoint


def _objects() -> list[ObjectSpec]:
    return [ObjectSpec(colour, shape) for colour in COLOURS for shape in SHAPES]


def enumerate_specs(task: str) -> list[PromptSpec]:
    """Every distinct prompt spec of a task, in a fixed order."""
    if task == SINGLE:
        return [PromptSpec((ObjectSpec(o.colour, o.shape, size),)) for o in _objects() for size in (None, *SIZES)]
    if task == COMPOSITION:
        return [PromptSpec((a, b), r) for a, b in itertools.permutations(_objects(), 2) for r in RELATIONS]
    if task == DIVERSITY:
        return [PromptSpec((ObjectSpec(shape=s),)) for s in SHAPES] + \
               [PromptSpec((ObjectSpec(colour=c),)) for c in COLOURS]
    if task == PREFERENCE:
        pairs = [PromptSpec((a, b), CONJUNCTION) for a, b in itertools.permutations(_objects(), 2)]
        return enumerate_specs(SINGLE) + pairs + enumerate_specs(DIVERSITY)
    raise ValueError(f"unknown prompt task {task!r}; known: {', '.join(CORPORA)}")


def is_unseen(spec: PromptSpec, heldout: set[tuple[str, str]]) -> bool:
    return any((o.colour, o.shape) in heldout for o in spec.objects)


@dataclass
class Corpus:
    task: str
    train: list[dict]
    eval: list[dict]
    disjoint: bool


def _record(spec: PromptSpec, task: str, unseen: bool) -> dict:
    return {"prompt": caption_for_spec(spec), "task": task, "spec": spec.to_dict(), "unseen": unseen}


def build_corpus(task: str, params: PromptsParams, seed: int) -> Corpus:
    """Split a task's prompts: unseen ones to eval; seen ones to train, and to eval too when plentiful."""
    heldout = {tuple(pair) for pair in params.heldout_combos}
    rng = np.random.default_rng([seed, CORPORA.index(task)])
    specs = enumerate_specs(task)
    order = rng.permutation(len(specs))
    seen = [specs[i] for i in order if not is_unseen(specs[i], heldout)]
    unseen = [specs[i] for i in order if is_unseen(specs[i], heldout)]
    eval_unseen = unseen[: params.eval_per_task // 2]
    eval_seen_target = params.eval_per_task - len(eval_unseen)
    disjoint = len(seen) >= 2 * eval_seen_target
    eval_seen = seen[:eval_seen_target]
    train = seen[eval_seen_target:] if disjoint else seen
    return Corpus(
        task=task,
        train=[_record(s, task, False) for s in train[: params.train_per_task]],
        eval=[_record(s, task, False) for s in eval_seen] + [_record(s, task, True) for s in eval_unseen],
        disjoint=disjoint,
    )


def check_no_leak(train: list[dict], eval_: list[dict], source: str) -> None:
    """Raise if eval prompts appear in train (for corpora that promise a held-out split)."""
    leaked = sorted({r["prompt"] for r in train} & {r["prompt"] for r in eval_})
    if leaked:
        raise DataFileError(f"{source}: {len(leaked)} eval prompt(s) also in train, e.g. {leaked[0]!r}; "
                         "a held-out split is required (prompts.require_disjoint)")
