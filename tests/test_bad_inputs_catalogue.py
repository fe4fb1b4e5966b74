"""The catalogue of bad inputs (Reliability II), by kind, each through a real stage's `main(argv)` on the
smoke profile with the contract of tests/test_bad_inputs.py (`run_case`): exit status 2, one line
naming the file, key or path and what was expected, no training step, and every previous output,
checkpoint and input byte-identical afterwards.

Kinds: `data-loss` (an output path that would replace an input or another output), `silent` (was
accepted and ignored, clamped or quietly wrong), `unclear` (was a traceback or named nothing),
`security` (a planted checkpoint, names that reach file names or Markdown), `leftovers` (the
checkpoint params), `exit-code` (argument errors are one line too). Together with the cases of
tests/test_bad_inputs.py (kind `clear`: those that already failed clearly) they make the catalogue.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import SMOKE_PARAMS
from tests.test_bad_inputs import CASES as EARLIER_CASES
from tests.test_bad_inputs import STAGES, Case, Env, _params, _rewrite_line, _task, run_case
from tests.test_bad_inputs import tracking_store  # noqa: F401  (the fixture, for cases that fail while tracked)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("data-loss", "silent", "unclear", "security", "leftovers", "exit-code")


# -- preparing bad inputs ------------------------------------------------------------------------------
def _override(**options: Callable[[Env], str | Path] | str) -> Callable[[Env], None]:
    """Set command-line options (`out="..."` is --out, `stop_after` is --stop-after); a callable gets the Env."""

    def prepare(env: Env) -> None:
        for name, value in options.items():
            env.override["--" + name.replace("_", "-")] = str(value(env) if callable(value) else value)

    return prepare


def _both(*steps: Callable[[Env], object]) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        for step in steps:
            step(env)

    return prepare


def _project(env: Env) -> None:
    """A project folder (dvc.yaml, the previous run's data/) as the working folder, as under `dvc repro`."""
    shutil.copy(ROOT / "dvc.yaml", env.tmp / "dvc.yaml")
    for output in ("data/models/base/model_index.json", "data/models/reward/config.json",
                   "data/models/rl/model_index.json", "data/metrics/eval.json", "data/samples/base/index.jsonl"):
        path = env.tmp / output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{output} of a previous run\n")
    env.monkeypatch.chdir(env.tmp)


def _file(relative: str, content: bytes = b"notes\n") -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        path = env.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    return prepare


def _params_edit(old: str, new: str) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        text = env.params.read_text()
        assert old in text
        env.params.write_text(text.replace(old, new, 1))

    return prepare


def _stable_diffusion_with(**model) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        raw["model"] = {"kind": "stable_diffusion", "pretrained": "some/model", **model}
        raw["rl"]["pretrain_beta"] = 0.0

    return mutate


def _budget_json(content) -> Callable[[Env], None]:
    return lambda env: env.budget.write_text(json.dumps(content))


def _own_model_edit(edit: Callable[[Path], None]) -> Callable[[Env], None]:
    return lambda env: edit(env.own_model())


def _no_manifest(env: Env) -> None:
    (env.own_prompts() / "manifest.json").unlink()


def _not_utf8_line(relative: str) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        path = env.own_prompts() / relative
        path.write_bytes(path.read_bytes() + '{"prompt": "a red circle é"}\n'.encode("latin-1"))

    return prepare


def _eval_record(number: int, **changes) -> Callable[[Env], None]:
    """Line `number` of the composition eval prompts with fields changed."""

    def prepare(env: Env) -> None:
        path = env.own_prompts() / "composition.eval.jsonl"
        lines = path.read_text().splitlines()
        lines[number - 1] = json.dumps({**json.loads(lines[number - 1]), **changes})
        path.write_text("\n".join(lines) + "\n")

    return prepare


SAMPLE_ROWS = [{"task": "single", "prompt": "a red circle", "seed": 0},
               {"task": "single", "prompt": "a blue square", "seed": 0}]


def _samples(edit: Callable[[dict[str, Path]], None] | None = None,
             models=("base", "control", "rl")) -> Callable[[Env], None]:
    """Sample folders of `models` (PNGs + index.jsonl) as the sample stage writes them, then `edit` them."""

    def prepare(env: Env) -> None:
        from PIL import Image

        folders = {}
        for model in models:
            folder = env.samples / model
            (folder / "single").mkdir(parents=True)
            index = []
            for number, row in enumerate(SAMPLE_ROWS):
                name = f"single/{number:05d}.png"
                Image.new("RGB", (24, 24), "white").save(folder / name)
                index.append({**row, "path": name})
            (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
            folders[model] = folder
        if edit:
            edit(folders)

    return prepare


def _index_row(model: str, number: int, **changes) -> Callable[[dict[str, Path]], None]:
    def edit(folders: dict[str, Path]) -> None:
        index = folders[model] / "index.jsonl"
        rows = [json.loads(line) for line in index.read_text().splitlines()]
        rows[number - 1].update(changes)
        index.write_text("".join(json.dumps(r) + "\n" for r in rows))

    return edit


def _drop_row(model: str) -> Callable[[dict[str, Path]], None]:
    def edit(folders: dict[str, Path]) -> None:
        index = folders[model] / "index.jsonl"
        index.write_text(index.read_text().splitlines()[0] + "\n")

    return edit


def _png(model: str, content: Callable[[bytes], bytes]) -> Callable[[dict[str, Path]], None]:
    def edit(folders: dict[str, Path]) -> None:
        path = folders[model] / "single" / "00001.png"
        path.write_bytes(content(path.read_bytes()))

    return edit


def _reward_model(edit: Callable[[Path], None]) -> Callable[[Env], None]:
    """A trained-looking preference model folder (untrained weights) at env.reward, then `edit` it."""

    def prepare(env: Env) -> None:
        from pipeline.rewards.preference import PreferenceModel

        env.reward = env.tmp / "reward-model"
        PreferenceModel(channels=(8, 8, 8)).save_pretrained(env.reward)
        edit(env.reward)

    return prepare


def _eval_metrics(content: str) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        env.metrics_in.mkdir()
        (env.metrics_in / "eval.json").write_text(content)

    return prepare


def _pretrain_checkpoint_folder(env: Env) -> Path:
    """The checkpoint folder the smoke pretrain run resumes from (the key of stages/pretrain.py)."""
    from pipeline.checkpoints import run_key
    from pipeline.config import load_params

    params = load_params(env.params)
    return env.checkpoints / run_key("pretrain", params, params.world, params.model, params.pretrain)


def _pretrain_checkpoint(name: str, kind: str = "pretrain", step: int = 3,
                         state: dict | None = None) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        import torch

        folder = _pretrain_checkpoint_folder(env)
        folder.mkdir(parents=True)
        torch.save({"checkpoint": {"kind": kind, "step": step, "format": 2}, **(state or {})}, folder / name)

    return prepare


class _Planted:
    """Unpickled, it would run a shell command that writes a file (torch.load(weights_only=False) would)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"echo planted > '{self.marker}'",)


def _planted_checkpoint(env: Env) -> None:
    import torch

    folder = _pretrain_checkpoint_folder(env)
    folder.mkdir(parents=True)
    torch.save({"checkpoint": {"kind": "pretrain", "step": 3, "format": 2}, "model": _Planted(env.tmp / "PLANTED")},
               folder / "step-000003.pt")


def _key_folder_is_a_file(env: Env) -> None:
    _pretrain_checkpoint_folder(env).write_text("x")


def _checkpoint_root_is_a_file(env: Env) -> None:
    env.checkpoints = env.tmp / "checkpoints.txt"
    env.checkpoints.write_text("not a folder")


def _preference_task(raw: dict) -> None:
    raw["rl"]["tasks"][0].update(name="preference", reward="preference", prompts="preference")


def _wall_time(raw: dict) -> None:
    raw["control"]["budget"] = "wall_time"


def _no_cuda(case: Case) -> Case:
    import torch

    marks = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
    return pytest.param(case, id=case.id, marks=marks)


# -- the catalogue -----------------------------------------------------------------------------------
C = Case
CASES = [
    # -- data loss: the output-path guard, for every stage's --out and other outputs --------------------------
    C("prompts-out-is-the-params-file", "prompts", _override(out=lambda env: env.params),
      ("--out", "bad.yaml", "it is its input --params", "expected a path of its own"), kind="data-loss"),
    C("prompts-out-contains-other-outputs", "prompts", _both(_project, _override(out="data")),
      ("--out data: refusing to write there", "contains the output of stage pretrain", "data/models/base"),
      kind="data-loss"),
    C("pretrain-out-is-a-parent-of-other-outputs", "pretrain", _both(_project, _override(out="data/models")),
      ("--out data/models", "contains the output of stage reward_model", "data/models/reward"), kind="data-loss"),
    C("pretrain-out-is-the-checkpoint-folder", "pretrain", _override(out=lambda env: env.checkpoints),
      ("--out", "is its input --checkpoints"), kind="data-loss"),
    C("pretrain-metrics-inside-out", "pretrain", _override(metrics=lambda env: env.out / "base" / "pretrain.json"),
      ("--out", "contains its output --metrics", "pretrain.json"), kind="data-loss"),
    C("pretrain-out-is-an-existing-file", "pretrain", _both(_file("notes.txt"), _override(out=lambda e: e.tmp / "notes.txt")),
      ("--out", "notes.txt: is an existing file; expected a folder"), kind="data-loss"),
    C("pretrain-metrics-is-an-existing-folder", "pretrain", _both(_file("results/a.txt"),
                                                                  _override(metrics=lambda e: e.tmp / "results")),
      ("--metrics", "results: is an existing folder; expected a file path"), kind="data-loss"),
    C("sample-out-is-its-prompts", "sample", _override(out=lambda env: env.prompts),
      ("--out", "is its input --prompts"), kind="data-loss"),
    C("sample-out-is-its-model", "sample", _override(out=lambda env: env.model),
      ("--out", "is its input --model"), kind="data-loss"),
    C("sample-out-is-a-foreign-folder", "sample", _both(_file("papers/notes.txt"),
                                                        _override(out=lambda e: e.tmp / "papers")),
      ("--out", "papers: is a folder this stage did not write (no index.jsonl)", "expected a new or empty folder"),
      kind="data-loss"),
    C("reward-model-out-is-its-base", "reward_model", _override(out=lambda env: env.model),
      ("--out", "is its input --base"), kind="data-loss"),
    C("reward-model-out-is-another-stages-output", "reward_model",
      _both(_project, _override(out="data/models/base")),
      ("--out data/models/base", "is the output of stage pretrain"), kind="data-loss"),
    C("finetune-out-is-its-base", "finetune", _override(out=lambda env: env.model),
      ("--out", "is its input --base"), kind="data-loss"),
    C("finetune-two-outputs-one-path", "finetune", _override(metrics=lambda env: env.out / "budget.json"),
      ("--metrics", "is its output --budget"), kind="data-loss"),
    C("finetune-out-contains-the-checkpoints", "finetune",
      _override(checkpoints=lambda env: env.out / "rl" / "checkpoints"),
      ("--out", "contains its input --checkpoints"), kind="data-loss"),
    C("control-out-is-its-base", "control", _both(_budget_json({"unet_passes": 240}), _override(out=lambda e: e.model)),
      ("--out", "is its input --base"), kind="data-loss"),
    C("control-metrics-is-its-budget", "control", _both(_budget_json({"unet_passes": 240}),
                                                        _override(metrics=lambda e: e.budget)),
      ("--metrics", "is its input --budget"), kind="data-loss"),
    C("evaluate-metrics-inside-samples", "evaluate", _both(_samples(), _override(metrics=lambda e: e.samples / "e.json")),
      ("--metrics", "lies inside its input --samples"), kind="data-loss"),
    C("evaluate-plots-inside-samples", "evaluate", _both(_samples(), _override(plots=lambda e: e.samples / "base")),
      ("--plots", "lies inside its input --samples"), kind="data-loss"),
    C("report-out-is-its-metrics", "report", _both(_eval_metrics("{}"), _override(out=lambda e: e.metrics_in)),
      ("--out", "is its input --metrics"), kind="data-loss"),
    C("report-out-is-the-project", "report", _both(_project, _override(out=".")),
      ("--out .: refusing to write there", "contains"), kind="data-loss"),
    # -- silent: accepted and ignored, clamped or quietly wrong -------------------------------------------
    C("train-timesteps-past-the-window", "finetune", _params(lambda raw: raw["rl"].update(train_timesteps=4)),
      ("bad.yaml", "'rl.train_timesteps' is 4", "holds 3 of the 4 rollout steps", "expected at most 3"),
      kind="silent"),
    C("train-corpus-past-the-grammar", "prompts", _params(lambda raw: raw["prompts"].update(train_per_task=10_000)),
      ("bad.yaml", "'prompts.train_per_task' is 10000", "expected at most 528"), kind="silent"),
    C("eval-corpus-past-the-grammar", "prompts", _params(lambda raw: raw["prompts"].update(eval_per_task=600)),
      ("bad.yaml", "'prompts.eval_per_task' is 600", "expected at most 528"), kind="silent"),
    C("budget-of-zero-passes", "control", _budget_json({"unet_passes": 0}),
      ("budget.json: 'unet_passes' is 0; expected a positive whole number",), workspace=True, kind="silent"),
    C("budget-of-fractional-passes", "control", _budget_json({"unet_passes": 12.5}),
      ("budget.json: 'unet_passes' is 12.5; expected a positive whole number",), workspace=True, kind="silent"),
    C("budget-that-never-ends", "control", _budget_json({"unet_passes": 1e300}),
      ("budget.json: 'unet_passes' is 1e+300; expected a positive whole number",), workspace=True, kind="silent"),
    C("wall-time-budget-of-no-time", "control", _both(_params(_wall_time), _budget_json({"unet_passes": 9, "seconds": 0})),
      ("budget.json: 'seconds' is 0; expected a positive number",), workspace=True, kind="silent"),
    C("stop-after-zero", "finetune", _override(stop_after="0"),
      ("argument --stop-after: expected a whole number >= 1, got 0",), kind="silent"),
    C("boolean-for-an-integer", "pretrain", _params(lambda raw: raw["pretrain"].update(steps=True)),
      ("bad.yaml", "'pretrain.steps': expected a number, got a boolean (True)"), kind="silent"),
    C("boolean-for-a-float", "sample", _params(lambda raw: raw["sampling"].update(guidance=False)),
      ("bad.yaml", "'sampling.guidance': expected a number, got a boolean (False)"), kind="silent"),
    C("integer-for-a-boolean", "finetune", _params(lambda raw: raw["rl"].update(clamp_x0=1)),
      ("bad.yaml", "'rl.clamp_x0': expected true or false, got 1"), kind="silent"),
    C("duplicated-key", "pretrain", _params_edit("  steps: 6\n", "  steps: 6\n  steps: 7\n"),
      ("bad.yaml: line", "duplicated key 'steps'", "expected each key once"), kind="silent"),
    C("tiny-model-ignores-pretrained", "pretrain", _params(lambda raw: raw["model"].update(pretrained="x/y")),
      ("bad.yaml", "'model.pretrained' is set but model.kind 'tiny' ignores it"), kind="silent"),
    C("tiny-model-ignores-resolution", "sample", _params(lambda raw: raw["model"].update(resolution=32)),
      ("bad.yaml", "'model.resolution' is set but model.kind 'tiny' ignores it"), kind="silent"),
    C("stable-diffusion-ignores-channels", "sample", _params(_stable_diffusion_with(channels=[8, 16, 16])),
      ("bad.yaml", "'model.channels' is set but model.kind 'stable_diffusion' ignores it"), kind="silent"),
    C("exclude-word-misspelt", "finetune", _params(_task(exclude_words=["smal"])),
      ("bad.yaml", "'rl.tasks[0].exclude_words'", "'smal' is in no prompt (did you mean 'small'?)"), kind="silent"),
    C("exclude-word-matching-nothing", "finetune", _params(_task(exclude_words=["small"])),
      ("'rl.tasks[0].exclude_words'", "'small' is in none of the task's 8 train prompts", "expected a word of them"),
      workspace=True, kind="silent"),
    C("repeated-seeds", "sample", _params(lambda raw: raw["sampling"].update(seeds=[0, 0])),
      ("bad.yaml", "'sampling.seeds' is [0, 0]; expected distinct seeds"), kind="silent"),
    C("prompt-disagrees-with-spec", "sample",
      _eval_record(1, prompt="a green square above a yellow triangle"),
      ("composition.eval.jsonl:1: prompt 'a green square above a yellow triangle' disagrees with its spec",),
      workspace=True, kind="silent"),
    C("prompt-word-outside-vocabulary", "finetune",
      _rewrite_line("composition.train.jsonl", 1, '{"prompt": "a red circel left of a blue square"}'),
      ("composition.train.jsonl:1", "word 'circel' is not in the vocabulary (did you mean 'circle'?)"),
      workspace=True, kind="silent"),
    C("prompt-too-long-for-the-tokenizer", "reward_model",
      _rewrite_line("preference.train.jsonl", 2, json.dumps({"prompt": "a red circle left of a blue square and "
                                                                      "a green triangle above a yellow circle"})),
      ("preference.train.jsonl:2", "has 16 words; expected at most 10"), workspace=True, kind="silent"),
    C("prompt-not-in-the-grammar", "finetune", _rewrite_line("composition.train.jsonl", 3, '{"prompt": "red a circle"}'),
      ("composition.train.jsonl:3: cannot parse caption 'red a circle'", "expected a caption of the shapes world"),
      workspace=True, kind="silent"),
    C("missing-manifest", "finetune", _no_manifest,
      ("manifest.json: file not found; expected the prompts stage's manifest", "prompts.require_disjoint: false"),
      workspace=True, kind="silent"),
    C("model-scheduler-contradicts-params", "sample",
      _params(lambda raw: raw["model"].update(prediction_type="epsilon")),
      ("base: the model has prediction_type 'v_prediction' but 'model.prediction_type' is 'epsilon'",),
      workspace=True, kind="silent"),
    C("model-shape-contradicts-params", "reward_model", _params(lambda raw: raw["model"].update(channels=[8, 16, 32])),
      ("base: the model has channels (8, 16, 16) but 'model.channels' is (8, 16, 32)",), workspace=True, kind="silent"),
    C("reward-model-path-mistyped", "evaluate", _both(_samples(), lambda env: setattr(env, "reward", env.tmp / "rewrad")),
      ("--reward-model", "rewrad: reward model folder not found", "--reward-model ''"), kind="silent"),
    C("sample-set-missing-rows", "evaluate", _samples(_drop_row("rl")),
      ("samples/rl: lacks 1 of the 2 (task, prompt, seed) samples of", "samples/base"), kind="silent"),
    C("sample-path-outside-the-folder", "evaluate", _samples(_index_row("rl", 2, path="../base/single/00001.png")),
      ("rl/index.jsonl:2: 'path' '../base/single/00001.png' points outside", "expected an image inside"),
      kind="silent"),
    C("sample-set-repeats-a-row", "evaluate", _samples(_index_row("base", 2, prompt="a red circle")),
      ("base/index.jsonl: rows 1 and 2 are both", "expected one image per (task, prompt, seed)"), kind="silent"),
    C("checkpoint-name-disagrees-with-its-step", "pretrain", _pretrain_checkpoint("step-000005.pt", step=3),
      ("step-000005.pt: unusable checkpoint: holds step 3 but its name says step 5", "delete"), workspace=True, tracked=True,
      kind="silent"),
    # -- unclear: were tracebacks or named nothing ------------------------------------------------------
    C("channels-zero", "pretrain", _params(lambda raw: raw["model"].update(channels=[0, 16, 16])),
      ("bad.yaml", "'model'", "3 positive multiples of 8", "got [0, 16, 16]"), kind="unclear"),
    C("channels-negative", "pretrain", _params(lambda raw: raw["model"].update(channels=[-8, 16, 16])),
      ("bad.yaml", "3 positive multiples of 8", "got [-8, 16, 16]"), kind="unclear"),
    C("heads-do-not-divide-channels", "pretrain", _params(lambda raw: raw["model"].update(attention_heads=3)),
      ("bad.yaml", "'model.attention_heads' is 3; expected a divisor of the last of model.channels (16)"),
      kind="unclear"),
    C("text-width-odd", "pretrain", _params(lambda raw: raw["model"].update(text_dim=17)),
      ("bad.yaml", "'model.text_dim' is 17; expected an even number"), kind="unclear"),
    C("device-unknown", "sample", _params(lambda raw: raw.update(device="gpu")),
      ("bad.yaml", "'device' is 'gpu'; expected 'cpu', 'cuda', 'cuda:N' or 'mps'"), kind="unclear"),
    _no_cuda(C("device-unavailable", "sample", _params(lambda raw: raw.update(device="cuda")),
               ("bad.yaml", "'device' is 'cuda' but CUDA is not available on this machine; expected 'cpu'"),
               kind="unclear")),
    C("seed-negative", "prompts", _params(lambda raw: raw.update(seed=-1)),
      ("bad.yaml", "'seed'", "greater than or equal to 0", "-1"), kind="unclear"),
    C("seed-too-large", "prompts", _params(lambda raw: raw.update(seed=2**40)),
      ("bad.yaml", "'seed'", "less than 2147483648"), kind="unclear"),
    C("bootstrap-exhausting-memory", "evaluate", _params(lambda raw: raw["evaluate"].update(bootstrap=10**9)),
      ("bad.yaml", "'evaluate.bootstrap'", "less than or equal to 100000"), kind="unclear"),
    C("png-not-an-image", "evaluate", _samples(_png("rl", lambda data: b"not a png at all")),
      ("rl/single/00001.png: cannot read the image", "expected a PNG the sample stage wrote"), kind="unclear"),
    C("png-truncated", "evaluate", _samples(_png("base", lambda data: data[: len(data) // 2])),
      ("base/single/00001.png: cannot read the image",), kind="unclear"),
    C("reward-model-weights-truncated", "evaluate",
      _both(_samples(), _reward_model(lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"))),
      ("reward-model/model.safetensors: cannot load the reward model's weights", "re-run `dvc repro reward_model`"),
      tracked=True, kind="unclear"),
    C("reward-model-config-not-json", "finetune",
      _both(_params(_preference_task), _reward_model(lambda d: (d / "config.json").write_text("{kind: "))),
      ("'rl.tasks[0].reward' ('preference')", "reward-model/config.json: not valid JSON"), workspace=True,
      kind="unclear"),
    C("tokenizer-folder-missing", "sample", _own_model_edit(lambda m: shutil.rmtree(m / "tokenizer")),
      ("base/tokenizer: folder not found; expected a tiny model folder with unet/, text_encoder/, tokenizer/",),
      workspace=True, kind="unclear"),
    C("model-index-not-json", "sample", _own_model_edit(lambda m: (m / "model_index.json").write_text("{")),
      ("base/model_index.json: not valid JSON", "re-run the stage that writes the model"), workspace=True,
      kind="unclear"),
    C("checkpoint-of-another-kind", "pretrain", _pretrain_checkpoint("step-000003.pt", kind="finetune"),
      ("step-000003.pt: unusable checkpoint: a 'finetune' checkpoint; expected a 'pretrain' one",), workspace=True, tracked=True,
      kind="unclear"),
    C("checkpoint-of-another-model", "pretrain", _pretrain_checkpoint("step-000003.pt", state={"model": {}}),
      ("step-000003.pt: checkpoint does not fit this run",), workspace=True, tracked=True, kind="unclear"),
    C("checkpoint-folder-is-a-file", "pretrain", _key_folder_is_a_file,
      ("is a file; expected a checkpoint folder",), workspace=True, tracked=True, kind="unclear"),
    C("checkpoint-root-is-a-file", "finetune", _checkpoint_root_is_a_file,
      ("checkpoints.txt: is a file; expected a checkpoint folder",), workspace=True, tracked=True, kind="unclear"),
    C("prompt-file-not-utf8", "sample", _not_utf8_line("single.eval.jsonl"),
      ("single.eval.jsonl: not UTF-8 text", "expected JSON lines"), workspace=True, kind="unclear"),
    C("params-file-not-utf8", "prompts", lambda env: env.params.write_bytes("seed: 0  # é\n".encode("latin-1")),
      ("bad.yaml: not UTF-8 text", "expected a YAML params file"), kind="unclear"),
    C("runs-file-not-json", "report", _both(_eval_metrics("{}"), _file("runs.json", b"[{"),
                                            _override(runs=lambda e: e.tmp / "runs.json")),
      ("runs.json: not valid JSON", "expected an eval.json or `dvc exp show --json` output"), kind="unclear"),
    C("eval-metrics-not-an-object", "report", _eval_metrics("[1, 2]"),
      ("metrics/eval.json: holds a JSON list; expected a metrics JSON object",), kind="unclear"),
    C("sample-seed-not-a-number", "evaluate", _samples(_index_row("base", 1, seed="zero")),
      ("base/index.jsonl:1: 'seed' is 'zero'; expected a whole number",), kind="unclear"),
    C("reward-option-value", "finetune", _params(_task(reward_options={"count": "yes"})),
      ("'rl.tasks[0].reward_options'", "option 'count' of reward 'composition' must be true or false, got 'yes'"),
      workspace=True, kind="unclear"),
    C("budget-not-an-object", "control", _budget_json([240]),
      ("budget.json: expected a number under 'unet_passes'",), workspace=True, kind="unclear"),
    # -- security --------------------------------------------------------------------------------------
    C("planted-pickle-checkpoint", "pretrain", _planted_checkpoint,
      ("step-000003.pt: corrupt checkpoint (UnpicklingError", "Weights only load failed"), workspace=True, tracked=True,
      kind="security"),
    C("sample-task-with-html", "report", _both(_eval_metrics("{}"), _samples(_index_row("base", 1, task="<b>x</b>"))),
      ("base/index.jsonl:1: 'task' is '<b>x</b>'; expected letters, digits, '_' or '-'",), kind="security"),
    C("sample-task-with-a-path", "evaluate", _samples(_index_row("rl", 1, task="../../escape")),
      ("rl/index.jsonl:1: 'task' is '../../escape'",), kind="security"),
    C("rl-task-name-with-markdown", "finetune", _params(_task(name="[x](http://example.com)")),
      ("bad.yaml", "'rl.tasks[0].name': expected letters, digits, '_' or '-'"), kind="security"),
    # -- leftovers: the checkpoint params ---------------------------------------------------------------
    C("checkpoint-keep-zero", "pretrain", _params(lambda raw: raw.update(checkpoint_keep=0)),
      ("bad.yaml", "'checkpoint_keep'", "greater than or equal to 1"), kind="leftovers"),
    C("checkpoint-keep-boolean", "finetune", _params(lambda raw: raw.update(checkpoint_keep=True)),
      ("bad.yaml", "'checkpoint_keep': expected a number, got a boolean"), kind="leftovers"),
    # -- exit codes: argument errors are one line with status 2 as well ----------------------------------
    C("stop-after-not-a-number", "finetune", _override(stop_after="x"),
      ("argument --stop-after: expected a whole number >= 1, got 'x'",), kind="exit-code"),
    C("unknown-argument", "pretrain", _override(outt="data"),
      ("unrecognized arguments: --outt data", "(see --help)"), kind="exit-code"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch, request):
    run_case(case, tmp_path, capsys, monkeypatch, request)


def _case(entry) -> Case:
    return entry if isinstance(entry, Case) else entry.values[0]


def test_the_catalogue_covers_every_kind_and_stage():
    everything = EARLIER_CASES + [_case(c) for c in CASES]
    assert len(everything) >= 60
    assert len({c.id for c in everything}) == len(everything)
    by_kind = {kind: sum(c.kind == kind for c in everything) for kind in (*KINDS, "clear")}
    assert all(by_kind[kind] for kind in KINDS), by_kind
    assert by_kind["data-loss"] + by_kind["silent"] + by_kind["unclear"] >= 40, by_kind
    assert set(STAGES) <= {c.stage for c in everything if c.kind == "data-loss"}, "a stage's --out is not guarded"
    assert set(STAGES) <= {c.stage for c in everything}


# -- exit codes: only the project's input errors are the user's --------------------------------------------
@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), FileNotFoundError("a bug")])
def test_a_bug_keeps_its_traceback_instead_of_posing_as_bad_input(bug, capsys):
    import argparse

    from stages._cli import run_main

    def body(params):
        raise bug

    with pytest.raises(type(bug)):
        run_main("finetune", argparse.Namespace(params=str(SMOKE_PARAMS)), body)
    assert "error: stage" not in capsys.readouterr().err


def test_a_bug_in_a_real_stage_exits_1_with_a_traceback(tmp_path):
    import subprocess
    import sys

    script = ("import sys, pipeline.prompts as p\n"
              "p.build_corpus = lambda *args: {}['a bug']\n"
              "from stages.prompts import main\n"
              "main(sys.argv[1:])\n")
    result = subprocess.run([sys.executable, "-c", script, "--params", str(SMOKE_PARAMS), "--out",
                             str(tmp_path / "prompts")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr
    assert "error: stage" not in result.stderr and not (tmp_path / "prompts").exists()
