"""The negative-aware estimator (pipeline/rl/nft.py): its loss, its fixed point, and the trainer's use of it."""
import pytest
import torch
import yaml

from pipeline.config import parse_params
from pipeline.models.loading import load_model
from pipeline.rl.nft import nft_loss, optimality
from tests.conftest import SMOKE_PARAMS, task_trainer


def test_optimality_maps_advantages_into_unit_interval():
    r = optimality(torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0]), scale=2.0)
    assert r.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_gradient_at_the_old_policy_is_the_signed_diffusion_loss_gradient():
    torch.manual_seed(0)
    v_old, target = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    r = torch.tensor([0.0, 0.3, 0.5, 1.0])
    beta = 0.7
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, target, r, beta).sum().backward()
    expected = 2 * beta * (2 * r - 1)[:, None, None, None] * (v_old - target) / 12  # mean over 12 elements
    torch.testing.assert_close(v.grad, expected)
    assert torch.all(v.grad[2] == 0)  # r = 1/2: no pull either way


def test_the_loss_is_minimal_a_bounded_step_from_the_old_policy():
    torch.manual_seed(1)
    v_old, target = torch.randn(3, 5), torch.randn(3, 5)
    r, beta = torch.tensor([0.9, 0.5, 0.1]), 2.0
    v = v_old.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([v], lr=1, max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = nft_loss(v, v_old, target, r, beta).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    expected = v_old + ((2 * r - 1) / beta)[:, None] * (target - v_old)
    torch.testing.assert_close(v.detach(), expected, atol=1e-4, rtol=1e-4)


def _nft_params(**rl):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"].update({"algorithm": "nft", "eta": 0.0, "share_group_noise": False, "weight_decay": 0.0,
                      "pretrain_beta": 0.0, "lr": 1e-3, **rl})
    return parse_params(raw)


def test_nft_iteration_moves_the_weights_only_when_rewards_differ(smoke_workspace):
    params = _nft_params()
    trainer = task_trainer(load_model(smoke_workspace / "base", params), params, reward="null")
    before = torch.cat([p.detach().flatten().clone() for p in trainer.parameters])
    rows = trainer.iteration()
    after = torch.cat([p.detach().flatten() for p in trainer.parameters])
    assert rows[0]["skipped"] == 0 and rows[0]["loss_rl"] > 0 and (after - before).abs().max() > 1e-5
    # deterministic rollouts: a group's samples differ by their starting noise only
    assert trainer.rl.eta == 0.0

    class Constant:
        name, task, distribution_level = "constant", "composition", False

        def __call__(self, images, prompts, metadata):
            return torch.ones(len(prompts))

    trainer = task_trainer(load_model(smoke_workspace / "base", params), params)
    trainer.tasks[0].reward = Constant()
    before = torch.cat([p.detach().flatten().clone() for p in trainer.parameters])
    rows = trainer.iteration()
    after = torch.cat([p.detach().flatten() for p in trainer.parameters])
    assert rows[0]["optimality_spread"] == 0.0
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # r = 1/2 everywhere: no gradient, no step


def test_nft_rollouts_use_their_own_steps_and_guidance(smoke_workspace, monkeypatch):
    import pipeline.rl.trainer as trainer_module

    params = _nft_params(rollout_steps=3, rollout_guidance=1.0)
    calls = []
    real = trainer_module.sample_trajectories
    monkeypatch.setattr(trainer_module, "sample_trajectories",
                        lambda *a, **k: calls.append((k["steps"], k["guidance"], k["eta"])) or real(*a, **k))
    trainer = task_trainer(load_model(smoke_workspace / "base", params), params, reward="null")
    assert trainer.uncond is None  # guidance 1: no unconditional rows
    before = trainer.state.unet_passes
    trainer.iteration()
    assert calls and set(calls) == {(3, 1.0, 0.0)}
    n = params.rl.tasks[0].prompts_per_iteration * params.rl.tasks[0].samples_per_prompt
    points = n * params.rl.train_timesteps
    # rollouts (3 steps, one row), frozen predictions (one row) and training passes (3 rows' worth)
    assert trainer.state.unet_passes - before == n * 3 + points + 3 * points


@pytest.mark.parametrize("bad, message", [
    ({"nft_beta": 0}, "rl.nft_beta"), ({"nft_adv_scale": -1}, "rl.nft_adv_scale"), ({"nft_t_min": 1.0}, "rl.nft_t_min"),
    ({"rollout_steps": 1}, "rl.rollout_steps"), ({"rollout_guidance": 0.5}, "rl.rollout_guidance"),
    ({"algorithm": "grpo"}, "rl.algorithm"), ({"nft_guidance": 0.5}, "rl.nft_guidance"),
    ({"nft_ref_weight": -1}, "rl.nft_ref_weight"),
])
def test_bad_estimator_params_name_the_key(bad, message):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"].update({"algorithm": "nft", "eta": 0.0, "share_group_noise": False, **bad})
    with pytest.raises(ValueError, match=message):
        parse_params(raw, "p.yaml")


def test_reference_anchor_pulls_back_to_the_starting_model(smoke_workspace):
    """With rl.nft_ref_weight the loss carries ||v_theta - v_ref||^2 to a frozen copy of the starting UNet:
    at the start it adds nothing, and after the weights moved it is positive and pulls them back."""
    from pipeline.rl.nft import draw_points, points_loss, prepare_points

    params = _nft_params(nft_ref_weight=5.0)
    trainer = task_trainer(load_model(smoke_workspace / "base", params), params, reward="null")
    assert trainer.reference is not None and not any(p.requires_grad for p in trainer.reference.parameters())
    batch, traj = trainer.sample_task(trainer.tasks[0], 0)
    samples, timesteps, noise = draw_points(trainer.model, traj, 2, torch.Generator().manual_seed(0))

    def losses():
        points = prepare_points(trainer.model, traj, samples, timesteps, noise, uncond=trainer.uncond,
                                guidance=trainer.guidance, chunk=len(samples), reference=trainer.reference)
        r = torch.full((len(traj),), 0.5)
        with_ref = points_loss(trainer.model, traj, points, r, beta=1.0, uncond=trainer.uncond,
                               guidance=trainer.guidance, ref_weight=5.0)
        without = points_loss(trainer.model, traj, points, r, beta=1.0, uncond=trainer.uncond,
                              guidance=trainer.guidance)
        return float(with_ref), float(without)

    with_ref, without = losses()
    assert with_ref == pytest.approx(without, abs=1e-6)  # the reference is the starting model
    with torch.no_grad():
        for p in trainer.parameters:
            p.add_(0.01 * torch.randn_like(p))
    with_ref, without = losses()
    assert with_ref > without + 1e-4
    assert _no_reference_without_the_anchor(smoke_workspace)


def _no_reference_without_the_anchor(smoke_workspace) -> bool:
    params = _nft_params()
    return task_trainer(load_model(smoke_workspace / "base", params), params, reward="null").reference is None
