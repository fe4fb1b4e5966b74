"""What the pretrain stage measures of the model it made: detector accuracy on the eval prompts."""
from __future__ import annotations

from pathlib import Path

from pipeline.corpora import SPECIFIED_CORPORA
from pipeline.eval_sets import eval_rows, sample_rows
from pipeline.evaluation.accuracy import spec_accuracy
from pipeline.models.base import Text2ImageModel
from pipeline.params import Params
from pipeline.world.scene import PromptSpec


def evaluate_accuracy(model: Text2ImageModel, prompts_dir: str | Path, params: Params,
                      progress: bool = True) -> dict[str, float]:
    """Detector accuracy on the single and composition eval prompts x `sampling.seeds`."""
    rows = eval_rows(prompts_dir, params, tasks=SPECIFIED_CORPORA)
    images = sample_rows(model, rows, params, progress=progress)
    return spec_accuracy(images.numpy(), [PromptSpec.from_dict(r["spec"]) for r in rows])
