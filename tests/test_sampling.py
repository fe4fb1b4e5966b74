"""The shared DDIM transition: matches diffusers, exact Gaussian log-prob, ratio 1 on-policy."""
import math

import pytest
import torch

from pipeline.sampling import ddim_transition, guided_prediction, sample_trajectories
from pipeline.rl.policy import recompute_log_probs


def _scheduler(model, steps=10):
    model.scheduler.set_timesteps(steps)
    return model.scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_transition_mean_matches_ddim_scheduler_step(tiny_model_factory, prediction_type):
    model = tiny_model_factory(prediction_type=prediction_type)
    scheduler = _scheduler(model)
    x = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    output = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    for t in scheduler.timesteps[[0, 4, 9]]:
        ours = ddim_transition(scheduler, output, t, x, eta=1.0)  # no noise -> the mean
        theirs = scheduler.step(output, t, x, eta=0.0).prev_sample
        # eta only changes the direction term's coefficient: compare with diffusers at the same eta, zero noise
        theirs_eta = scheduler.step(output, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        assert torch.allclose(ours.mean, theirs_eta, atol=1e-6), (t, (ours.mean - theirs_eta).abs().max())
        det = ddim_transition(scheduler, output, t, x, eta=0.0)
        assert torch.allclose(det.mean, theirs, atol=1e-6)


def test_log_prob_equals_float64_gaussian_density(tiny_model_factory):
    model = tiny_model_factory()
    scheduler = _scheduler(model)
    g = torch.Generator().manual_seed(3)
    x, output, action = (torch.randn(3, 3, 24, 24, generator=g) for _ in range(3))
    t = scheduler.timesteps[2]
    step = ddim_transition(scheduler, output, t, x, eta=0.7, prev_sample=action)
    mean, std = step.mean.double(), step.std.double()[:, None, None, None]
    reference = (-((action.double() - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi))
    assert torch.allclose(step.log_prob.double(), reference.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


def test_recomputed_log_probs_give_ratio_one(tiny_model_factory):
    model = tiny_model_factory()
    prompts = ["a red circle", "a blue square left of a green triangle", "a shape"]
    traj = sample_trajectories(model, prompts, [1, 2, 3], steps=8, guidance=3.0, eta=1.0)
    assert traj.latents.shape == (3, 9, 3, 24, 24) and traj.log_probs.shape == (3, 8)
    samples = torch.arange(3).repeat_interleave(8)
    steps = torch.arange(8).repeat(3)
    with torch.no_grad():
        log_prob = recompute_log_probs(model, traj, samples, steps, uncond=model.encode_prompts([""]),
                                       guidance=3.0, eta=1.0, clamp_x0=False)
    ratio = torch.exp(log_prob - traj.log_probs[samples, steps])
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), ratio


def test_same_seed_same_sample_and_group_noise_sharing(tiny_model_factory):
    model = tiny_model_factory()
    a = sample_trajectories(model, ["a red circle"] * 2, [5, 6], steps=4, guidance=1.0, eta=1.0, init_seeds=[9, 9])
    b = sample_trajectories(model, ["a red circle"], [5], steps=4, guidance=1.0, eta=1.0, init_seeds=[9])
    # the same seed gives the same path; batch composition changes conv kernels only at float noise level
    assert torch.allclose(a.latents[0], b.latents[0], atol=1e-4)
    assert torch.equal(a.latents[0, 0], a.latents[1, 0])  # shared start
    assert not torch.equal(a.latents[0, -1], a.latents[1, -1])  # different paths


def test_guidance_one_equals_conditional(tiny_model_factory):
    model = tiny_model_factory()
    x = torch.randn(2, 3, 24, 24)
    embeds = model.encode_prompts(["a red circle", "a shape"])
    with torch.no_grad():
        plain = model.predict(x, torch.tensor([500, 500]), embeds)
        guided = guided_prediction(model, x, torch.tensor(500), embeds, model.encode_prompts([""]), 1.0)
    assert torch.equal(plain, guided)
