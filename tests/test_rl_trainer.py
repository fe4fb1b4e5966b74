"""The RL trainer end to end on the smoke profile: resume after SIGKILL is bitwise, bad rewards are skipped."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import load_params, parse_params
from pipeline.models.loading import load_model
from pipeline.rewards.registry import Reward
from pipeline.rl.run import build_trainer
from pipeline.rl.trainer import TaskRuntime
from tests.conftest import SMOKE_PARAMS, checkpoint_stamp

ROOT = Path(__file__).resolve().parent.parent


def _params_file(tmp_path: Path, control_budget: str = "unet_passes", **rl_overrides) -> Path:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"].update(rl_overrides)
    raw["control"]["budget"] = control_budget
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _finetune_args(ws: Path, params: Path, out: Path) -> list[str]:
    return ["--params", str(params), "--base", str(ws / "base"), "--prompts", str(ws / "prompts"),
            "--reward-model", str(ws / "no-reward-model"), "--out", str(out / "rl"), "--metrics",
            str(out / "train.json"), "--plots", str(out / "train.csv"), "--budget", str(out / "budget.json"),
            "--checkpoints", str(out / "checkpoints"), "--no-progress"]


def test_resume_after_sigkill_is_bitwise_equal(smoke_workspace, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from stages import finetune

    params = _params_file(tmp_path, control_budget="wall_time", iterations=4, checkpoint_every=1)
    finetune.main(_finetune_args(smoke_workspace, params, tmp_path / "straight"))

    killed = tmp_path / "killed"
    store = f"sqlite:///{tmp_path / 'killed.db'}"  # both launches of the killed run track here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.finetune", *_finetune_args(smoke_workspace, params, killed)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed / "checkpoints").glob("*/step-000002.pt")) and time.time() < deadline:
        assert proc.poll() is None, "finetune exited before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "rl").exists(), "a killed run must not leave a model output"
    stamp = checkpoint_stamp(killed / "checkpoints")
    finetune.main(_finetune_args(smoke_workspace, params, killed))
    assert checkpoint_stamp(killed / "checkpoints", stamp[0]) == stamp, "the second launch started over"

    a = (tmp_path / "straight" / "rl" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (killed / "rl" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b
    assert (tmp_path / "straight" / "train.csv").read_text() != ""
    straight = (tmp_path / "straight" / "train.json").read_text()
    assert straight == (killed / "train.json").read_text()
    assert (tmp_path / "straight" / "train.csv").read_text() == (killed / "train.csv").read_text()
    # the wall time handed to the control counts the iterations before the kill too (MLflow has each
    # iteration's wall time; train.csv leaves it out, so that dvc.lock does not change between runs)
    client = MlflowClient(store)
    seconds = {m.step: m.value for run in client.search_runs([e.experiment_id for e in client.search_experiments()])
               for m in client.get_metric_history(run.info.run_id, "composition.iteration_seconds")}
    budget = json.loads((killed / "budget.json").read_text())
    assert sorted(seconds) == [1, 2, 3, 4]
    assert budget["iterations"] == 4 and budget["seconds"] >= 0.99 * sum(seconds.values())


def test_a_checkpoint_of_a_run_with_other_prompts_is_not_resumed(smoke_workspace, tmp_path):
    """The checkpoint folder's name covers the prompts and reward-model folders, not only params."""
    import shutil

    from stages import finetune

    params = _params_file(tmp_path, iterations=2, checkpoint_every=1)
    finetune.main(_finetune_args(smoke_workspace, params, tmp_path / "out"))  # leaves a step-1 checkpoint
    prompts = tmp_path / "prompts"
    shutil.copytree(smoke_workspace / "prompts", prompts)
    train = prompts / "composition.train.jsonl"
    train.write_text("".join(reversed(train.read_text().splitlines(keepends=True))))

    def with_other_prompts(out: Path) -> list[str]:
        args = _finetune_args(smoke_workspace, params, out)
        args[args.index("--prompts") + 1] = str(prompts)
        return args

    finetune.main(with_other_prompts(tmp_path / "out"))
    assert len(list((tmp_path / "out" / "checkpoints").iterdir())) == 2
    first = (tmp_path / "out" / "train.csv").read_text()
    fresh = tmp_path / "fresh"
    finetune.main(with_other_prompts(fresh))
    assert (fresh / "train.csv").read_text() == first  # no wall-clock columns: the same run, the same bytes


class _NaNReward(Reward):
    name, task = "nan", "composition"

    def __call__(self, images, prompts, metadata):
        return torch.full((len(prompts),), float("nan"))


def test_iteration_with_no_finite_reward_is_skipped(smoke_workspace):
    params = load_params(SMOKE_PARAMS)
    model = load_model(smoke_workspace / "base", params)
    records = [{"prompt": "a red circle left of a blue square", "spec": None}]
    trainer = build_trainer(model, params, [TaskRuntime(params.rl.tasks[0], _NaNReward(), records)])
    trainer.rl = trainer.rl.model_copy(update={"pretrain_beta": 0.0})
    before = [p.detach().clone() for p in model.unet.parameters()]
    with pytest.warns(RuntimeWarning, match="no finite reward"):
        rows = trainer.iteration()
    assert rows[0]["skipped"] == 1 and rows[0]["dropped"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.unet.parameters()))


def test_distribution_level_reward_rejects_group_advantages(smoke_workspace):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"]["tasks"] = [{"name": "diversity", "reward": "diversity", "prompts": "diversity",
                           "samples_per_prompt": 2, "prompts_per_iteration": 2, "advantage": "group"}]
    params = parse_params(raw)
    from pipeline.rl.run import build_tasks

    tasks = build_tasks(params, smoke_workspace / "prompts", None)
    with pytest.raises(ValueError, match=r"rl.tasks\[0\].advantage"):
        build_trainer(load_model(smoke_workspace / "base", params), params, tasks)


def test_joint_three_task_training_runs(smoke_workspace, tmp_path):
    from stages import finetune

    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"]["iterations"] = 1
    raw["rl"]["tasks"] = [
        {"name": "composition", "reward": "composition", "prompts": "composition", "samples_per_prompt": 2,
         "prompts_per_iteration": 2, "advantage": "group"},
        {"name": "diversity", "reward": "diversity", "prompts": "diversity", "samples_per_prompt": 4,
         "prompts_per_iteration": 2, "advantage": "batch"},
        {"name": "area", "reward": "area", "prompts": "single", "samples_per_prompt": 2,
         "prompts_per_iteration": 2, "advantage": "group"},
    ]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    finetune.main(_finetune_args(smoke_workspace, params, tmp_path))
    import pandas as pd

    history = pd.read_csv(tmp_path / "train.csv").set_index("task")
    assert list(history.index) == ["composition", "diversity", "area"]
    assert (history["skipped"] == 0).all() and history["reward_mean"].notna().all()
    # each task scored by its own reward: a claim score, minus a parity, a mean object area
    assert 0 <= history.loc["composition", "reward_mean"] <= 1
    assert -1 <= history.loc["diversity", "reward_mean"] <= 0
    assert 0 < history.loc["area", "reward_mean"] < 0.5
    assert history.loc["area", "grad_norm_rl"] > 0  # areas differ within a group: a real update


def test_exclude_words_leave_those_prompts_out_of_a_task(smoke_workspace):
    from pipeline.rl.run import build_tasks

    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"]["tasks"] = [{"name": "area", "reward": "area", "prompts": "single", "exclude_words": ["Small"]}]
    params = parse_params(raw)
    every = build_tasks(parse_params({**raw, "rl": {**raw["rl"], "tasks": [{**raw["rl"]["tasks"][0],
                                                                             "exclude_words": []}]}}),
                        smoke_workspace / "prompts", None)[0].records
    kept = build_tasks(params, smoke_workspace / "prompts", None)[0].records
    small = [r for r in every if "small" in r["prompt"].split()]
    assert small and len(kept) == len(every) - len(small)
    assert not any("small" in r["prompt"].split() for r in kept)

    raw["rl"]["tasks"][0]["exclude_words"] = ["small", "large", "a"]
    with pytest.raises(ValueError, match=r"rl.tasks\[0\].exclude_words.*leaves none"):
        build_tasks(parse_params(raw), smoke_workspace / "prompts", None)
    raw["rl"]["tasks"][0]["exclude_words"] = ["two words"]
    with pytest.raises(Exception, match="exclude_words"):
        parse_params(raw)


def test_lora_on_the_tiny_model_trains_only_adapters_and_saves_them_fused(smoke_workspace, tmp_path):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"]["lora_rank"] = 2
    params = parse_params(raw)
    model = load_model(smoke_workspace / "base", params)
    base = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(3))
    embeds = model.encode_prompts(["a red circle", "a large blue square"])
    with torch.no_grad():
        before = model.predict(x, torch.tensor([900, 300]), embeds)

    from pipeline.rl.run import build_tasks

    trainer = build_trainer(model, params, build_tasks(params, smoke_workspace / "prompts", None))
    assert model.lora_rank == 2
    trainable = {n for n, p in model.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in trainer.parameters} == {id(p) for n, p in model.unet.named_parameters() if n in trainable}
    with torch.no_grad():  # B = 0 at init: the adapters start as the identity
        assert torch.equal(model.predict(x, torch.tensor([900, 300]), embeds), before)

    adapted = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    trainer.iteration()
    changed = {n for n, p in model.unet.named_parameters() if not torch.equal(p, adapted[n])}
    assert changed and changed <= trainable and any("lora_B" in n for n in changed)

    model.save_pretrained(tmp_path / "rl")
    saved = load_model(tmp_path / "rl", load_params(SMOKE_PARAMS))
    assert saved.lora_rank == 0 and not any("lora_" in n for n, _ in saved.unet.named_parameters())
    plain = dict(saved.unet.named_parameters())
    assert set(plain) == set(base)
    moved = {n for n in plain if not torch.equal(plain[n], base[n])}
    assert moved and all(any(t in n for t in ("to_q", "to_k", "to_v", "to_out")) for n in moved)
    with torch.no_grad():
        assert torch.allclose(saved.predict(x, torch.tensor([900, 300]), embeds),
                              model.predict(x, torch.tensor([900, 300]), embeds), atol=1e-5)


def test_task_weight_scales_the_step_size(smoke_workspace):
    """A task's weight multiplies its optimiser step. Scaling its advantages instead (the old way)
    left the step almost unchanged: AdamW divides out a constant gradient scale."""
    from tests.conftest import task_trainer

    params = load_params(SMOKE_PARAMS)
    params = params.model_copy(update={"rl": params.rl.model_copy(update={"lr": 1e-3, "adam_eps": 1e-12})})

    def first_step(weight: float) -> torch.Tensor:
        trainer = task_trainer(load_model(smoke_workspace / "base", params), params, reward="null")
        task = trainer.tasks[0]
        batch, traj = trainer.sample_task(task, 0)
        _, adv = trainer.score(task, batch, traj)
        before = torch.cat([p.detach().flatten().clone() for p in trainer.parameters])
        trainer.train_task(traj, adv.advantages, adv.valid, plan=trainer.make_plan(traj)[:1], step_scale=weight)
        return torch.cat([p.detach().flatten() for p in trainer.parameters]) - before

    one, two = first_step(1.0), first_step(2.0)
    assert one.abs().max() > 1e-4
    torch.testing.assert_close(two, 2 * one, rtol=1e-2, atol=1e-6)


def test_rl_sampling_honours_sampling_batch_size_without_changing_the_samples(smoke_workspace, monkeypatch):
    """`sampling.batch_size` used to be ignored by RL sampling (one call per task batch, a GPU
    memory trap); chunked, the trajectories are the same, since each sample has its own seeds."""
    import pipeline.rl.trainer as trainer_module
    from tests.conftest import task_trainer

    params = load_params(SMOKE_PARAMS)
    calls = []
    real = trainer_module.sample_trajectories
    monkeypatch.setattr(trainer_module, "sample_trajectories",
                        lambda model, prompts, *a, **k: calls.append(len(prompts)) or real(model, prompts, *a, **k))

    def trajectories(batch_size: int):
        small = params.model_copy(update={"sampling": params.sampling.model_copy(update={"batch_size": batch_size})})
        trainer = task_trainer(load_model(smoke_workspace / "base", small), small)
        batch, traj = trainer.sample_task(trainer.tasks[0], 0)
        return len(batch.prompts), traj

    n, whole = trajectories(64)
    _, chunked = trajectories(3)
    assert n == 4 and calls == [4, 3, 1] and chunked.prompts == whole.prompts
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=0, atol=1e-4)  # kernels round per batch shape
    torch.testing.assert_close(chunked.log_probs, whole.log_probs, rtol=0, atol=1e-4)
    assert (chunked.images.int() - whole.images.int()).abs().max() <= 1
    assert chunked.embeds.shape == whole.embeds.shape
