"""Build the trainer from params and drive it: iterations, checkpoints, resume, time limit, outputs."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import torch

from pipeline.checkpoints import resume, save_checkpoint
from pipeline.errors import DataFileError, ModelLoadError, ParamsError, RewardLoadError, RewardOptionError
from pipeline.io import read_jsonl, read_text
from pipeline.models.base import Text2ImageModel
from pipeline.params import Params
from pipeline.progress import Progress
from pipeline.pretraining import StreamBatches, scene_stream
from pipeline.prompts import MANIFEST, check_no_leak
from pipeline.rewards.registry import RewardContext, build_reward
from pipeline.rl.distributed import Distributed
from pipeline.rl.trainer import RLTrainer, TaskRuntime
from pipeline.world.captions import record_problem

PRETRAIN_STREAM_OFFSET = 1_000  # L_pre pairs come from a stream seeded apart from pretraining's
PROCESS_STREAM_STRIDE = 100_003  # and apart on each process


def build_tasks(params: Params, prompts_dir: str | Path, reward_model_dir: str | Path | None,
                reward_options: dict | None = None) -> list[TaskRuntime]:
    tasks = []
    for index, task in enumerate(params.rl.tasks):
        context = RewardContext(reward_model_dir=Path(reward_model_dir) if reward_model_dir else None,
                                device=params.device, options={**(reward_options or {}), **task.reward_options})
        records = read_jsonl(Path(prompts_dir) / f"{task.prompts}.train.jsonl", required=("prompt",),
                             check=record_problem)
        if params.prompts.require_disjoint:
            check_train_split(prompts_dir, task.prompts, records)
        records = without_words(records, task.exclude_words, f"'rl.tasks[{index}].exclude_words'")
        try:
            reward = build_reward(task.reward, context)
        except RewardLoadError as exc:
            raise ModelLoadError(f"'rl.tasks[{index}].reward' ({task.reward!r}): {exc}") from None
        except RewardOptionError as exc:
            raise ParamsError(f"'rl.tasks[{index}].reward_options': {exc}") from None
        tasks.append(TaskRuntime(task, reward, records))
    return tasks


def without_words(records: list[dict], words: list[str], key: str) -> list[dict]:
    """The records whose prompt contains none of `words` (whole words, any case)."""
    if not words:
        return records
    found = [set(re.findall(r"\w+", r["prompt"].lower())) for r in records]
    unused = [w for w in words if not any(w in f for f in found)]
    if unused:
        raise ParamsError(f"{key}: {unused[0]!r} is in none of the task's {len(records)} train prompts, so it "
                          "excludes nothing; expected a word of them")
    kept = [r for r, f in zip(records, found) if f.isdisjoint(words)]
    if not kept:
        raise ParamsError(f"{key} ({words}) leaves none of the task's {len(records)} train prompts; expected "
                          "words that leave some")
    return kept


def check_train_split(prompts_dir: str | Path, corpus: str, train: list[dict]) -> None:
    """Refuse train prompts that are also in `<corpus>.eval.jsonl` when the folder's manifest.json
    (written by the `prompts` stage) promises that corpus a held-out split."""
    manifest = Path(prompts_dir) / MANIFEST
    if not manifest.is_file():
        raise DataFileError(f"{manifest}: file not found; expected the prompts stage's manifest, which says which "
                            "corpora hold eval prompts out (or set prompts.require_disjoint: false)")
    try:
        disjoint = json.loads(read_text(manifest, "JSON")).get(corpus, {}).get("disjoint", False)
    except (json.JSONDecodeError, AttributeError):
        raise DataFileError(f"{manifest}: expected the prompts stage's manifest (a JSON object per corpus)") from None
    if disjoint:
        held_out = read_jsonl(Path(prompts_dir) / f"{corpus}.eval.jsonl", required=("prompt",), check=record_problem)
        check_no_leak(train, held_out, str(Path(prompts_dir) / f"{corpus}.train.jsonl"))


def build_trainer(model: Text2ImageModel, params: Params, tasks: list[TaskRuntime],
                  dist: Distributed | None = None) -> RLTrainer:
    for module in (getattr(model, "text_encoder", None), model.vae):
        if module is not None:
            module.requires_grad_(False)
    if params.rl.lora_rank and model.lora_rank != params.rl.lora_rank:
        model.enable_lora(params.rl.lora_rank)  # unless an earlier trainer on this model added them
    index = dist.process_index if dist else 0  # each process draws its own L_pre images (process 0: as one process)
    stream = scene_stream(params.world, params.seed + PRETRAIN_STREAM_OFFSET + PROCESS_STREAM_STRIDE * index)
    batches = StreamBatches(stream) if params.model.kind == "tiny" else None
    return RLTrainer(model, tasks, params.rl, params.sampling, params.seed, pretrain_batches=batches, dist=dist,
                     caption_dropout=params.pretrain.caption_dropout)


def train(trainer: RLTrainer, iterations: int, checkpoint_dir: str | Path | None, checkpoint_every: int,
          checkpoint_keep: int = 2, max_minutes: float | None = None, log_fn: Callable[[dict, int], None] | None = None,
          progress: bool = True, stop_after: int | None = None) -> dict:
    """Run until `iterations` (resuming from the newest checkpoint); returns timing and stop reason.
    `seconds` and `max_minutes` count the iterations of every launch, not only this one's."""
    if checkpoint_dir and trainer.dist.num_processes > 1:  # every process resumes its own RNG streams
        checkpoint_dir = Path(checkpoint_dir) / f"process-{trainer.dist.process_index}"
    resumed = resume(checkpoint_dir, "finetune", trainer.load_state_dict) if checkpoint_dir else 0
    reason = "iterations"
    bar = Progress("finetune", iterations, initial=trainer.state.iteration, unit="iteration",
                   enabled=progress and trainer.dist.is_main)
    while trainer.state.iteration < iterations:
        began = time.perf_counter()
        rows = trainer.iteration()
        trainer.state.seconds += time.perf_counter() - began
        bar.update(1, **{f"{r['task']} reward": r["reward_mean"] for r in rows})
        if log_fn:
            for row in rows:
                log_fn({f"{row['task']}/{k}": v for k, v in row.items()
                        if isinstance(v, (int, float)) and k not in ("iteration",)}, row["iteration"])
        done = trainer.state.iteration
        if checkpoint_dir and (done % checkpoint_every == 0) and done < iterations:
            save_checkpoint(checkpoint_dir, done, trainer.state_dict(), kind="finetune", keep=checkpoint_keep)
        if stop_after is not None and done >= stop_after:
            reason = "stop_after"
            break
        if max_minutes is not None and _all_agree(trainer, trainer.state.seconds / 60 >= max_minutes):
            reason = "max_minutes"
            break
    bar.close()
    return {"seconds": trainer.state.seconds, "stopped_by": reason, "resumed_from": resumed}


def _all_agree(trainer: RLTrainer, flag: bool) -> bool:
    """True on every process when any process says so: processes stop together (each has its own
    clock; one leaving the loop while another enters an iteration would hang the collectives)."""
    if trainer.dist.num_processes == 1 or trainer.dist.gather is None:
        return flag
    return bool(trainer.dist.gather(torch.tensor([float(flag)])).max() > 0)


def summarise(history: list[dict], tail: int = 5) -> dict[str, float]:
    """Flat, stable keys for dvc metrics: per task the first and last-`tail` reward means."""
    out: dict[str, float] = {}
    for task in dict.fromkeys(row["task"] for row in history):
        rows = [r for r in history if r["task"] == task]
        last = rows[-tail:]
        out[f"{task}.reward_first"] = rows[0]["reward_mean"]
        out[f"{task}.reward_last"] = float(torch.tensor([r["reward_mean"] for r in last]).nanmean())
        for key in ("approx_kl", "clip_fraction", "grad_norm_rl", "grad_norm_pre"):
            values = [r[key] for r in last if key in r]
            if values:
                out[f"{task}.{key}"] = float(sum(values) / len(values))
        out[f"{task}.dropped"] = int(sum(r["dropped"] for r in rows))
    if history:
        out["iterations"] = history[-1]["iteration"]
        out["unet_passes"] = history[-1]["unet_passes"]
    return out
