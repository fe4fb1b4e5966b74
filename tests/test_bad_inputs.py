"""Bad inputs: every case is a one-line error naming the file or key and what was expected, exit
code 2, and no partial output (Reliability, part 2).

Each case runs a real stage's `main([...])` in-process with the bad input prepared in tmp_path,
and checks the stage contract of `stages/_cli.py`:

* `SystemExit` with code 2;
* stderr is exactly ONE line, starting with `error: stage <name>:`, that contains the file or the
  dotted params key and the expectation;
* no training step was taken (an optimiser step fails the case);
* every file and folder under the case's folder is as it was: the previous outputs seeded at each
  of the stage's output paths, a checkpoint of an earlier run and the inputs are byte-identical,
  and nothing new (not an output, not a hidden temporary sibling) is left.

`run_case` is shared with tests/test_bad_inputs_catalogue.py, which holds the rest of the catalogue.

Params cases already covered by `tests/test_config.py` at the `load_params` level are not
repeated for the same key: unknown key with a typo suggestion (`rl.learning_rate`,
`pretrain.stpes`), wrong type (`pretrain.batch_size`), negative learning rate (`rl.lr`), NaN
(`rl.clip_range`), unknown reward at load level, an out-of-range nested list key, an empty task
list (`rl.tasks: []`), a missing params file, invalid YAML, and the subprocess exit-code check of
`stages.prompts`. The cases here go through the stages, with other keys.

Meaning of "batch not divisible" in this design: each RL iteration draws, per task,
`prompts_per_iteration x samples_per_prompt` samples and splits them into `rl.optimizer_steps`
minibatches (one gradient step each; `RLTrainer.make_plan`). That count must be divisible by
`rl.optimizer_steps`, otherwise the minibatches are unequal and, when the batch is smaller than
the number of steps, fewer gradient steps are taken than configured (`torch.chunk`).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from pipeline.rewards.registry import known_rewards
from tests.conftest import SMOKE_PARAMS

STAGES = ("prompts", "pretrain", "sample", "reward_model", "finetune", "control", "evaluate", "report")


@dataclass
class Env:
    """Where a case's inputs live and where its stage writes (everything under `out`)."""

    tmp: Path
    ws: Path | None  # the session's smoke workspace (prompts/, base/), read-only
    monkeypatch: pytest.MonkeyPatch | None = None
    override: dict[str, str] = field(default_factory=dict)  # command-line options set by the case
    out: Path = field(init=False)
    params: Path = field(init=False)
    prompts: Path | None = None
    model: Path | None = None
    reward: Path | None = None
    budget: Path | None = None
    samples: Path | None = None
    metrics_in: Path | None = None
    checkpoints: Path | None = None

    def __post_init__(self):
        self.out = self.tmp / "out"
        self.params = self.tmp / "bad.yaml"
        self.params.write_text(SMOKE_PARAMS.read_text())
        self.checkpoints = self.tmp / "checkpoints"
        self.reward = self.tmp / "no-reward-model"
        self.budget = self.tmp / "budget.json"
        self.samples = self.tmp / "samples"
        self.metrics_in = self.tmp / "metrics"
        if self.ws is not None:
            self.prompts = self.ws / "prompts"
            self.model = self.ws / "base"
        else:
            self.prompts = self.tmp / "prompts"
            self.model = self.tmp / "base"

    # -- preparing bad inputs ----------------------------------------------------------------------
    def set_params(self, mutate: Callable[[dict], None]) -> None:
        raw = yaml.safe_load(SMOKE_PARAMS.read_text())
        mutate(raw)
        self.params.write_text(yaml.safe_dump(raw))

    def own_prompts(self) -> Path:
        """A writable copy of the smoke prompts."""
        copy = self.tmp / "prompts"
        shutil.copytree(self.ws / "prompts", copy)
        self.prompts = copy
        return copy

    def own_model(self) -> Path:
        copy = self.tmp / "base"
        shutil.copytree(self.ws / "base", copy)
        self.model = copy
        return copy

    # -- the stage command line -----------------------------------------------------------------
    def argv(self, stage: str) -> list[str]:
        argv = self._default_argv(stage)
        for option, value in self.override.items():
            if option in argv:
                argv[argv.index(option) + 1] = value
            else:
                argv += [option, value]
        return argv

    def _default_argv(self, stage: str) -> list[str]:
        o = self.out
        common = ["--params", str(self.params), "--no-progress"]
        return common + {
            "prompts": ["--out", str(o / "prompts")],
            "pretrain": ["--prompts", str(self.prompts), "--out", str(o / "base"), "--metrics",
                         str(o / "pretrain.json"), "--checkpoints", str(self.checkpoints)],
            "sample": ["--model", str(self.model), "--prompts", str(self.prompts), "--out",
                       str(o / "samples" / "base")],
            "reward_model": ["--base", str(self.model), "--prompts", str(self.prompts), "--out", str(o / "reward"),
                             "--metrics", str(o / "reward_model.json")],
            "finetune": ["--base", str(self.model), "--prompts", str(self.prompts), "--reward-model",
                         str(self.reward), "--out", str(o / "rl"), "--metrics", str(o / "train.json"), "--plots",
                         str(o / "train.csv"), "--budget", str(o / "budget.json"), "--checkpoints",
                         str(self.checkpoints)],
            "control": ["--base", str(self.model), "--budget", str(self.budget), "--out", str(o / "control"),
                        "--metrics", str(o / "control.json"), "--checkpoints", str(self.checkpoints)],
            "evaluate": ["--samples", str(self.samples), "--reward-model", str(self.reward), "--metrics",
                         str(o / "eval.json"), "--plots", str(o / "plots")],
            "report": ["--metrics", str(self.metrics_in), "--plots", str(self.tmp / "plots"), "--samples",
                       str(self.samples), "--out", str(o / "report")],
        }[stage]


@dataclass
class Case:
    id: str
    stage: str
    prepare: Callable[[Env], object]  # writes the bad input (its return value is ignored)
    expect: tuple[str, ...]  # substrings of the one error line (besides "error: stage <stage>:")
    workspace: bool = False  # needs the smoke prompts and base model
    tracked: bool = False  # fails after the stage's MLflow run has started
    kind: str = "clear"  # the catalogue's kinds: data-loss, silent, unclear, security, leftovers, exit-code;
    # "clear": one of the bad inputs that already failed clearly before it


def _params(mutate: Callable[[dict], None]) -> Callable[[Env], None]:
    return lambda env: env.set_params(mutate)


def _params_text(text: str) -> Callable[[Env], None]:
    return lambda env: env.params.write_text(text)


def _pop(section: str, key: str) -> Callable[[dict], None]:
    return lambda raw: raw[section].pop(key)


def _task(**changes) -> Callable[[dict], None]:
    return lambda raw: raw["rl"]["tasks"][0].update(changes)


def _duplicate_task(raw: dict) -> None:
    raw["rl"]["tasks"].append(dict(raw["rl"]["tasks"][0]))


def _undivisible_batch(raw: dict) -> None:
    raw["rl"]["tasks"][0].update(prompts_per_iteration=3, samples_per_prompt=2)
    raw["rl"]["optimizer_steps"] = 4


def _rewrite_line(relative: str, number: int, text: str | None) -> Callable[[Env], None]:
    """Replace line `number` (1-based) of a copied prompt file; `None` empties the whole file."""

    def prepare(env: Env) -> None:
        path = env.own_prompts() / relative
        if text is None:
            path.write_text("")
            return
        lines = path.read_text().splitlines()
        assert len(lines) >= number
        lines[number - 1] = text
        path.write_text("\n".join(lines) + "\n")

    return prepare


def _missing_prompts(env: Env) -> None:
    env.prompts = env.tmp / "no-prompts"


def _leak_eval_into_train(env: Env) -> None:
    prompts = env.own_prompts()
    leaked = (prompts / "composition.eval.jsonl").read_text().splitlines()[0]
    with (prompts / "composition.train.jsonl").open("a") as handle:
        handle.write(leaked + "\n")


def _missing_model(env: Env) -> None:
    env.model = env.tmp / "no-model"


def _truncate_weights(env: Env) -> None:
    model = env.own_model()
    weights = sorted(model.rglob("*.safetensors")) or sorted(model.rglob("*.bin"))
    assert weights, f"no weight files in {model}"
    for path in weights:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])


def _delete_weights(env: Env) -> None:
    model = env.own_model()
    weights = sorted(model.rglob("*.safetensors")) or sorted(model.rglob("*.bin"))
    assert weights, f"no weight files in {model}"
    for path in weights:
        path.unlink()


def _hub_id_offline(env: Env) -> None:
    hub_id = "no-such-org/no-such-diffusion-model"
    def to_sd(raw):
        raw["model"] = {"kind": "stable_diffusion", "pretrained": hub_id}  # the tiny model's keys would be refused
        raw["rl"]["pretrain_beta"] = 0.0

    env.set_params(to_sd)
    env.model = Path(hub_id)  # a relative path that does not exist: read as a hub id


def _corrupt_checkpoint(env: Env) -> None:
    from pipeline.config import load_params
    from pipeline.checkpoints import run_key

    params = load_params(env.params)
    key = run_key("pretrain", params, params.world, params.model, params.pretrain)  # as stages/pretrain.py
    folder = env.checkpoints / key
    folder.mkdir(parents=True)
    (folder / "step-000003.pt").write_bytes(b"PK\x03\x04 truncated checkpoint")


def _budget(content: str | None) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        if content is not None:
            env.budget.write_text(content)

    return prepare


def _eval_json_missing(env: Env) -> None:
    env.metrics_in.mkdir()
    (env.metrics_in / "train.json").write_text("{}")


CASES = [
    # -- params files -----------------------------------------------------------------------------
    Case("params-not-a-mapping", "prompts", _params_text("- seed: 0\n- rl: {}\n"),
         ("bad.yaml", "expected a mapping of sections at the top level, got list")),
    Case("params-empty-file", "pretrain", _params_text("# nothing here\n"),
         ("bad.yaml", "expected a mapping of sections at the top level, got NoneType")),
    Case("section-not-a-mapping", "sample", _params(lambda raw: raw.update(sampling=5)),
         ("bad.yaml", "'sampling'", "valid dictionary", "got 5")),
    Case("unknown-key-typo", "pretrain", _params(lambda raw: raw["model"].update(channel=[8, 16, 16])),
         ("bad.yaml", "unknown key 'model.channel'", "did you mean 'model.channels'?")),
    Case("wrong-type", "reward_model", _params(lambda raw: raw["reward_model"].update(pairs="many")),
         ("bad.yaml", "'reward_model.pairs'", "valid integer", "'many'")),
    Case("negative-learning-rate", "control", _params(lambda raw: raw.setdefault("control", {}).update(lr=-1e-4)),
         ("bad.yaml", "'control.lr'", "greater than 0", "-0.0001")),
    Case("nan-in-params", "finetune", _params_text(SMOKE_PARAMS.read_text().replace("guidance: 3.0", "guidance: .nan")),
         ("bad.yaml", "'sampling.guidance' is nan; expected a finite number")),
    Case("missing-task-list", "evaluate", _params(_pop("rl", "tasks")), ("bad.yaml", "missing key 'rl.tasks'")),
    Case("duplicate-task-names", "finetune", _params(_duplicate_task),
         ("bad.yaml", "rl.tasks names must be unique", "['composition', 'composition']")),
    Case("batch-not-divisible", "finetune", _params(_undivisible_batch),
         ("bad.yaml", "'rl.tasks[0]'", "3 prompts_per_iteration x 2 samples_per_prompt = 6",
          "expected a number divisible by 'rl.optimizer_steps' (4)")),
    Case("unknown-reward-lists-known", "finetune", _params(_task(reward="aesthetics")),
         ("bad.yaml", "'rl.tasks[0].reward' is 'aesthetics'", "known rewards: " + ", ".join(known_rewards()))),
    Case("unknown-prompt-corpus", "finetune", _params(_task(prompts="landscapes")),
         ("bad.yaml", "'rl.tasks[0].prompts' is 'landscapes'", "known corpora: preference, composition")),
    Case("group-advantage-one-sample", "finetune", _params(_task(samples_per_prompt=1, prompts_per_iteration=2)),
         ("bad.yaml", "'rl.tasks[0].samples_per_prompt' is 1", "at least 2 samples per prompt")),
    Case("unknown-model-kind", "sample", _params(lambda raw: raw["model"].update(kind="gan")),
         ("bad.yaml", "'model.kind'", "'tiny' or 'stable_diffusion'", "'gan'")),
    Case("sd-without-source", "pretrain", _params(lambda raw: raw["model"].update(kind="stable_diffusion")),
         ("bad.yaml", "needs model.pretrained")),
    Case("heldout-combo-not-a-pair", "prompts",
         _params(lambda raw: raw["prompts"].update(heldout_combos=[["red", "hexagon"]])),
         ("bad.yaml", "'prompts.heldout_combos'", "('red', 'hexagon') is not a colour-shape pair")),
    Case("resolution-not-multiple-of-4", "pretrain", _params(lambda raw: raw["world"].update(resolution=26)),
         ("bad.yaml", "'world.resolution' must be a multiple of 4")),
    Case("empty-seed-list", "sample", _params(lambda raw: raw["sampling"].update(seeds=[])),
         ("bad.yaml", "'sampling.seeds'", "at least 1 item")),
    # -- prompt files -----------------------------------------------------------------------------
    Case("missing-prompt-folder", "sample", _missing_prompts,
         ("no-prompts/single.eval.jsonl: file not found",)),
    Case("empty-prompt-file", "sample", _rewrite_line("composition.eval.jsonl", 1, None),
         ("composition.eval.jsonl: file is empty; expected at least one JSON line",), workspace=True),
    Case("malformed-jsonl-line", "sample", _rewrite_line("composition.eval.jsonl", 3, '{"prompt": "a red'),
         ("composition.eval.jsonl:3: malformed JSON line",), workspace=True),
    Case("jsonl-line-missing-key", "finetune", _rewrite_line("composition.train.jsonl", 2, '{"task": "composition"}'),
         ("composition.train.jsonl:2: missing key(s) ['prompt']",), workspace=True),
    Case("jsonl-line-not-an-object", "reward_model", _rewrite_line("preference.train.jsonl", 1, "[1, 2]"),
         ("preference.train.jsonl:1: expected a JSON object, got list",), workspace=True),
    Case("eval-prompts-leak-into-train", "finetune", _leak_eval_into_train,
         ("composition.train.jsonl: 1 eval prompt(s) also in train", "a held-out split is required"),
         workspace=True),
    # -- models and checkpoints ---------------------------------------------------------------------
    Case("missing-model-folder", "sample", _missing_model, ("no-model: model folder not found",), workspace=True),
    Case("truncated-model-weights", "sample", _truncate_weights,
         ("base: cannot load the model", "the weights are missing or truncated"), workspace=True),
    Case("missing-model-weights", "reward_model", _delete_weights,
         ("base: cannot load the model", "the weights are missing or truncated"), workspace=True),
    Case("resolution-not-trained-for", "sample", lambda env: env.set_params(
        lambda raw: raw["world"].update(resolution=32)),
         ("base: the model was trained at 24 px but 'world.resolution' is 32",), workspace=True),
    Case("hub-id-not-available-offline", "sample", _hub_id_offline,
         ("cannot load Stable Diffusion 'no-such-org/no-such-diffusion-model'", "HF_HUB_OFFLINE=1"),
         workspace=True),
    Case("corrupt-checkpoint-on-resume", "pretrain", _corrupt_checkpoint,
         ("step-000003.pt: corrupt checkpoint", "delete it to resume from an older one"), workspace=True,
         tracked=True),
    Case("missing-reward-model", "finetune", _params(_task(name="preference", reward="preference",
                                                           prompts="preference")),
         ("'rl.tasks[0].reward' ('preference')", "no preference reward model in", "no-reward-model",
          "run `dvc repro reward_model`"), workspace=True),
    # -- inputs of control, evaluate, report --------------------------------------------------------
    Case("missing-budget-file", "control", _budget(None),
         ("budget.json: finetune's budget file not found",), workspace=True),
    Case("budget-file-not-json", "control", _budget("{unet_passes: 12"),
         ("budget.json: not valid JSON", "expected finetune's budget.json"), workspace=True),
    Case("budget-file-missing-key", "control", _budget('{"seconds": 1.5}'),
         ("budget.json: expected a number under 'unet_passes'",), workspace=True),
    Case("missing-samples-folder", "evaluate", lambda env: None,
         ("samples/base: sample folder not found",)),
    Case("missing-eval-metrics", "report", _eval_json_missing,
         ("metrics/eval.json: metrics file not found",)),
]


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory):
    """A working MLflow store, created before the stage runs (a new store logs its migrations)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('bad-inputs-mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


# What each stage's previous run left at its output paths (Env.argv), and a checkpoint of an earlier run.
PREVIOUS_OUTPUTS = {
    "prompts": ["prompts/manifest.json"], "pretrain": ["base/model_index.json", "pretrain.json"],
    "sample": ["samples/base/index.jsonl"], "reward_model": ["reward/config.json", "reward_model.json"],
    "finetune": ["rl/model_index.json", "train.json", "train.csv", "budget.json"],
    "control": ["control/model_index.json", "control.json"],
    "evaluate": ["eval.json", "plots/win_rate.csv", "plots/composition.csv"], "report": ["report/index.html"]}


def _seed_previous_outputs(env: Env, stage: str) -> None:
    for relative in PREVIOUS_OUTPUTS[stage]:
        path = env.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"a previous run's {relative}\n")
    earlier = env.checkpoints / "pretrain-of-an-earlier-run"
    earlier.mkdir(parents=True)
    (earlier / "step-000003.pt").write_bytes(b"a checkpoint of an earlier run")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def run_case(case: Case, tmp_path: Path, capsys, monkeypatch, request) -> str:
    """Run one bad input through its stage's `main(argv)` and check the contract (module docstring);
    returns the error line."""
    import importlib

    import torch

    if case.tracked:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("tracking_store"))
    ws = request.getfixturevalue("smoke_workspace") if case.workspace else None
    env = Env(tmp_path, ws, monkeypatch)
    _seed_previous_outputs(env, case.stage)
    case.prepare(env)
    stage = importlib.import_module(f"stages.{case.stage}")
    before = _snapshot(tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError(f"{case.id}: a training step was taken before the error")

    for optimizer in (torch.optim.AdamW, torch.optim.Adam):
        monkeypatch.setattr(optimizer, "step", no_training)
    capsys.readouterr()  # drop whatever preparing printed

    with pytest.raises(SystemExit) as info:
        stage.main(env.argv(case.stage))

    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{captured.err}"
    line = lines[0]
    assert line.startswith(f"error: stage {case.stage}: "), line
    assert "Traceback" not in line
    for fragment in case.expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    after = _snapshot(tmp_path)
    assert after.keys() == before.keys(), f"paths added or removed: {sorted(after.keys() ^ before.keys())}"
    assert [k for k in after if after[k] != before[k]] == [], "a previous output, checkpoint or input changed"
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_line_and_no_output(case, tmp_path, capsys, monkeypatch, request):
    run_case(case, tmp_path, capsys, monkeypatch, request)


def test_catalogue_is_large_and_covers_every_stage():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(STAGES) <= {c.stage for c in CASES}


def test_every_project_error_is_an_input_error_that_a_stage_reports_in_one_line(capsys):
    """pipeline/errors.py is the one home of the project's error types: each is an InputError (and
    keeps the built-in base callers catch it by), so a stage turns any of them into exit code 2."""
    import argparse
    import inspect

    from pipeline import errors
    from stages._cli import run_main

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 8 and all(issubclass(c, errors.InputError) for c in classes)
    assert issubclass(errors.ParamsError, ValueError) and issubclass(errors.UnknownRewardError, KeyError)

    def body(params):
        raise errors.RewardLoadError("cannot load the CLIP model 'x'")  # a RuntimeError, not caught before

    with pytest.raises(SystemExit) as info:
        run_main("finetune", argparse.Namespace(params=str(SMOKE_PARAMS)), body)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: stage finetune: cannot load the CLIP model 'x'\n"
