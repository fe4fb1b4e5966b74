"""The batched-timestep update equals the DDPO-style per-timestep loop on identical samples."""
import copy

import torch

from pipeline.config import load_params
from pipeline.models.loading import load_model
from pipeline.rl.reference_loop import per_timestep_update
from pipeline.rl.run import build_tasks, build_trainer
from tests.conftest import SMOKE_PARAMS


def test_batched_update_equals_per_timestep_loop(smoke_workspace):
    params = load_params(SMOKE_PARAMS)
    params = params.model_copy(update={"rl": params.rl.model_copy(update={"pretrain_beta": 0.0, "adam_eps": 1e-2})})
    model = load_model(smoke_workspace / "base", params)
    trainer = build_trainer(model, params, build_tasks(params, smoke_workspace / "prompts", None))
    batch, traj = trainer.sample_task(trainer.tasks[0], 0)
    advantages = torch.randn(len(traj), generator=torch.Generator().manual_seed(0))
    valid = torch.ones(len(traj), dtype=torch.bool)
    plan = trainer.make_plan(traj)
    start = copy.deepcopy(model.unet.state_dict())
    optimizer_start = copy.deepcopy(trainer.optimizer.state_dict())
    schedule_start = copy.deepcopy(trainer.schedule.state_dict())

    batched_losses = trainer.train_task(traj, advantages, valid, plan=plan)["loss_rl"]
    batched = copy.deepcopy(model.unet.state_dict())

    model.unet.load_state_dict(start)
    trainer.optimizer.load_state_dict(optimizer_start)
    trainer.schedule.load_state_dict(schedule_start)
    looped_losses = per_timestep_update(trainer, traj, advantages, valid, plan)

    assert len(batched_losses) == len(looped_losses) == params.rl.optimizer_steps
    assert batched_losses != [0.0] * len(batched_losses)
    for a, b in zip(batched_losses, looped_losses):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (a, b)  # fp32: batch size changes kernel rounding
    for key, value in model.unet.state_dict().items():
        assert torch.allclose(value, batched[key], atol=1e-5, rtol=1e-4), key
