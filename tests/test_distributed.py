"""accelerate launch with 2 CPU processes (gloo): same update as one process on the union batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.models.loading import load_model
from pipeline.rl.advantages import compute_advantages
from pipeline.rl.run import build_tasks, build_trainer
from pipeline.runtime import configure
from pipeline.sampling import Trajectory
from tests.conftest import SMOKE_PARAMS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_driver(params_path: Path, workspace: Path, out: Path, *mode: str, timeout: float = 240) -> None:
    """tests/ddp_driver.py under `accelerate launch` with 2 CPU processes (gloo); a hang is killed
    with its whole process group and fails the test."""
    import signal

    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         str(ROOT / "tests" / "ddp_driver.py"), str(params_path), str(workspace / "base"),
         str(workspace / "prompts"), str(out), *mode],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the 2-process run {mode or ''} hung for {timeout} s")
    assert proc.returncode == 0, stderr[-4000:]


def test_two_processes_equal_one_process_on_the_union(smoke_workspace, tmp_path):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    # Adam divides by |g|: with a tiny eps, float-level gradient differences near g = 0 become
    # lr-sized steps; a larger eps keeps the update linear in g so "same update" is testable.
    raw["rl"].update(pretrain_beta=0.0, warmup_iterations=0, max_grad_norm=1e9, lr=1e-3, adam_eps=1e-2)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    _run_driver(params_path, smoke_workspace, tmp_path)
    runs = [torch.load(tmp_path / f"process-{p}.pt", weights_only=False) for p in (0, 1)]
    assert all(r["num_processes"] == 2 for r in runs)
    # each process drew its own noise and prompts
    assert not torch.equal(runs[0]["traj"].latents[:, 0], runs[1]["traj"].latents[:, 0])
    # DDP kept the replicas identical
    for key, value in runs[0]["unet"].items():
        assert torch.equal(value, runs[1]["unet"][key]), key

    # one process, batch 2b: the same samples, the same (sample, step) minibatches
    params = load_params(params_path)
    configure(params.seed, params.threads)
    model = load_model(smoke_workspace / "base", params)
    trainer = build_trainer(model, params, build_tasks(params, smoke_workspace / "prompts", None))
    gathered = compute_advantages(torch.cat([r["rewards"] for r in runs]), params.rl.tasks[0].advantage,
                                  torch.cat([r["group_ids"] for r in runs]), clip=params.rl.adv_clip)
    assert torch.allclose(gathered.advantages, torch.cat([r["advantages"] for r in runs]))  # global statistics
    b = len(runs[0]["traj"])

    def update(order):
        """One process on the union batch, concatenated in `order`; returns the updated UNet state."""
        model.unet.load_state_dict(base_state)
        trainer.optimizer.state.clear()
        parts = [runs[p] for p in order]
        offsets = {p: i * b for i, p in enumerate(order)}
        merged = Trajectory.cat([r["traj"] for r in parts])
        adv = compute_advantages(torch.cat([r["rewards"] for r in parts]), params.rl.tasks[0].advantage,
                                 torch.cat([r["group_ids"] for r in parts]), clip=params.rl.adv_clip)
        plan = [(torch.cat([steps[p][0] + offsets[p] for p in order]), torch.cat([steps[p][1] for p in order]))
                for steps in zip(*[runs[p]["plan"] for p in (0, 1)]) for steps in [dict(enumerate(steps))]]
        trainer.train_task(merged, adv.advantages, adv.valid, plan=plan)
        return {k: v.clone() for k, v in model.unet.state_dict().items()}

    base_state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    reference = update((0, 1))
    swapped = update((1, 0))  # the same sums in another order: the float-noise floor of this comparison
    flat = lambda state: torch.cat([v.flatten().double() for v in state.values()])  # noqa: E731
    step = (flat(reference) - flat(base_state)).norm()
    ddp_error = (flat(runs[0]["unet"]) - flat(reference)).norm() / step
    floor = (flat(swapped) - flat(reference)).norm() / step
    assert step > 0, "the update changed nothing: the comparison would be vacuous"
    # measured: 2e-4 (DDP runs the UNet on half-size batches, whose kernels round differently, and
    # the log-prob gradient divides by sigma^2), against 8e-7 for a reordered single-process batch
    assert ddp_error < 1e-3, (ddp_error, floor)
    print(f"relative update difference: 2 processes vs 1 = {ddp_error:.2e}; reordered 1-process = {floor:.2e}")


def test_a_process_whose_rewards_are_all_nan_still_takes_every_step(smoke_workspace, tmp_path):
    """The skip used to be decided on each process's own rewards: process 1 (all NaN) skipped its
    RL steps while process 0 sat in DDP's all-reduce, and the collectives paired up wrongly or hung."""
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    _run_driver(params_path, smoke_workspace, tmp_path, "nan-on-process-1")
    runs = [torch.load(tmp_path / f"process-{p}.pt", weights_only=False) for p in (0, 1)]
    for run in runs:  # the gathered rewards are half finite on both processes: nobody skips
        assert [row["skipped"] for row in run["rows"]] == [0, 0]
        assert [row["dropped"] for row in run["rows"]] == [4, 4]
    for key, value in runs[0]["unet"].items():
        assert torch.equal(value, runs[1]["unet"][key]), key

