"""What the pretrain stage measures of the model it made: detector accuracy on the eval prompts."""
from __future__ import annotations

from pathlib import Path

from pipeline.corpora import SPECIFIED_CORPORA
from pipeline.eval_sets import eval_rows, sample_rows
from pipeline.evaluation.accuracy import spec_accuracy
from pipeline.models.base import Text2ImageModel
from pipeline.params import Params
from pipeline.world.scene import PromptSpec


def accuracy_rows(prompts_dir: str | Path, params: Params) -> list[dict]:
    """The single and composition eval prompts x `sampling.seeds` (read before training: a bad file fails first)."""
    return eval_rows(prompts_dir, params, tasks=SPECIFIED_CORPORA)


def evaluate_accuracy(model: Text2ImageModel, rows: list[dict], params: Params, progress: bool = True,
                      label: str = "sampling") -> dict[str, float]:
    """Detector accuracy on `rows` (`accuracy_rows`)."""
    images = sample_rows(model, rows, params, progress=progress, label=label)
    return spec_accuracy(images.numpy(), [PromptSpec.from_dict(r["spec"]) for r in rows])
