"""Advantage normalisation and clipped policy loss (pipeline/rl/advantages.py, loss.py)."""
import math

import pytest
import torch

from pipeline.rl.advantages import ADVANTAGE_MODES, AdvantageResult, compute_advantages
from pipeline.pretraining import diffusion_loss
from pipeline.rl.loss import clipped_policy_loss


def _pop_std(t):
    return t.std(unbiased=False).item()


def test_group_advantages_normalised_per_group():
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0.0, 5.0, -3.0, 100.0]).repeat_interleave(8)
    rewards = torch.randn(32, generator=g) * torch.tensor([1.0, 0.1, 3.0, 10.0]).repeat_interleave(8) + offsets
    ids = torch.arange(4).repeat_interleave(8)
    res = compute_advantages(rewards, "group", group_ids=ids)
    assert isinstance(res, AdvantageResult)
    assert res.advantages.dtype == torch.float32 and res.advantages.shape == (32,)
    assert res.valid.all() and res.n_dropped == 0
    for k in range(4):
        a = res.advantages[ids == k].double()
        assert abs(a.mean().item()) < 1e-5
        assert abs(_pop_std(a) - 1.0) < 1e-5


def test_group_ids_need_not_be_contiguous():
    rewards = torch.tensor([1.0, 10.0, 2.0, 20.0])
    ids = torch.tensor([7, 3, 7, 3])
    res = compute_advantages(rewards, "group", group_ids=ids)
    assert torch.allclose(res.advantages, torch.tensor([-1.0, -1.0, 1.0, 1.0]), atol=1e-6)


def test_batch_advantages_normalised():
    rewards = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4 + 2
    res = compute_advantages(rewards, "batch")
    a = res.advantages.double()
    assert abs(a.mean().item()) < 1e-5
    assert abs(_pop_std(a) - 1.0) < 1e-5
    assert res.mean == pytest.approx(rewards.double().mean().item())
    assert res.std == pytest.approx(_pop_std(rewards.double()))


def test_clipping_outlier():
    rewards = torch.zeros(1000)
    rewards[0] = 1000.0  # z-score of the outlier is about sqrt(999) ~ 31.6
    res = compute_advantages(rewards, "batch", clip=10.0)
    assert res.advantages[0].item() == pytest.approx(10.0)
    assert res.advantages.abs().max().item() <= 10.0
    res = compute_advantages(-rewards, "batch", clip=5.0)
    assert res.advantages[0].item() == pytest.approx(-5.0)


def test_non_finite_rewards_dropped():
    rewards = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 4.0, float("-inf"), 7.0])
    res = compute_advantages(rewards, "batch")
    finite = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    assert res.n_dropped == 3
    assert res.valid.tolist() == [True, False, True, False, True, False, True]
    assert res.mean == pytest.approx(finite.mean().item())
    assert res.std == pytest.approx(_pop_std(finite))
    expected = (finite - finite.mean()) / finite.std(unbiased=False)
    assert torch.allclose(res.advantages[res.valid].double(), expected, atol=1e-6)
    assert (res.advantages[~res.valid] == 0).all()
    assert torch.isfinite(res.advantages).all()

    ids = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    res = compute_advantages(rewards, "group", group_ids=ids)
    assert res.n_dropped == 3
    assert (res.advantages[~res.valid] == 0).all()
    assert torch.allclose(res.advantages[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(res.advantages[3:], torch.tensor([0.0, -1.0, 0.0, 1.0]), atol=1e-6)


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_all_nan_batch(mode):
    rewards = torch.full((6,), float("nan"))
    res = compute_advantages(rewards, mode, group_ids=torch.zeros(6, dtype=torch.long))
    assert res.n_dropped == 6
    assert not res.valid.any()
    assert (res.advantages == 0).all()


def test_constant_and_singleton_groups_get_zero():
    rewards = torch.tensor([3.0, 3.0, 3.0, 1.0, 2.0, 5.0, 9.0, float("nan")])
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    res = compute_advantages(rewards, "group", group_ids=ids)
    assert (res.advantages[:3] == 0).all()  # constant group
    assert torch.allclose(res.advantages[3:5], torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert res.advantages[5].item() == 0.0  # single member
    assert res.advantages[6].item() == 0.0  # single finite member
    assert res.valid.tolist() == [True] * 7 + [False]
    # constant batch in batch mode: zeros too
    assert (compute_advantages(torch.full((5,), 2.0), "batch").advantages == 0).all()


def test_mode_errors():
    with pytest.raises(ValueError) as e:
        compute_advantages(torch.ones(4), "per_prompt")
    assert "per_prompt" in str(e.value) and "batch" in str(e.value) and "group" in str(e.value)
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages(torch.ones(4), "group")


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_gather_equals_full_batch_sliced(mode):
    g = torch.Generator().manual_seed(2)
    full = torch.randn(16, generator=g) * 3
    full[5] = float("nan")
    full_ids = torch.arange(4).repeat_interleave(4)
    B = 8
    local, other = full[:B], full[B:]
    local_ids, other_ids = full_ids[:B], full_ids[B:]

    def gather(t):
        return torch.cat([t, other_ids if t.dtype == torch.long else other])

    res = compute_advantages(local, mode, group_ids=local_ids, gather=gather, local_slice=slice(0, B))
    ref = compute_advantages(full, mode, group_ids=full_ids)
    assert res.advantages.shape == (B,)
    assert torch.equal(res.advantages, ref.advantages[:B])
    assert torch.equal(res.valid, ref.valid[:B])
    assert res.n_dropped == 1
    assert res.mean == pytest.approx(ref.mean) and res.std == pytest.approx(ref.std)


def test_clipped_loss_hand_computed_both_sides():
    eps = 0.1
    adv = torch.tensor([2.0, 1.0, -1.0, -3.0])
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5])
    old = torch.tensor([-1.0, -2.0, 0.5, 3.0])
    log_prob = (old + ratio.log()).requires_grad_(True)
    out = clipped_policy_loss(log_prob, old, adv, eps)
    # per entry max(-A*w, -A*clip(w)):
    #  A=2,  w=1.5: max(-3.0, -2.2) = -2.2 (clipped side)
    #  A=1,  w=0.5: max(-0.5, -0.9) = -0.5 (unclipped)
    #  A=-1, w=1.5: max( 1.5,  1.1) =  1.5 (unclipped)
    #  A=-3, w=0.5: max( 1.5,  2.7) =  2.7 (clipped side)
    expected = (-2.2 - 0.5 + 1.5 + 2.7) / 4  # 0.375
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    out.loss.backward()
    # d/dlogp of -A*w/4 = -A*w/4 on the unclipped side, 0 on the clipped side
    grad = log_prob.grad
    assert grad[0].item() == 0.0 and grad[3].item() == 0.0
    assert grad[1].item() == pytest.approx(-0.125, abs=1e-6)
    assert grad[2].item() == pytest.approx(0.375, abs=1e-6)
    assert out.clip_fraction == pytest.approx(1.0)
    assert out.ratio_mean == pytest.approx(1.0, abs=1e-6)
    assert out.approx_kl == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2, abs=1e-6)


def test_clip_fraction_and_approx_kl():
    diffs = torch.tensor([0.0, 0.05, 0.3, -0.3])  # ratios 1, 1.051, 1.350, 0.741
    old = torch.zeros(4)
    out = clipped_policy_loss(old + diffs, old, torch.ones(4), clip_range=0.1)
    assert out.clip_fraction == pytest.approx(0.5)
    assert out.approx_kl == pytest.approx(0.5 * (0.0 + 0.0025 + 0.09 + 0.09) / 4, abs=1e-7)
    assert out.ratio_mean == pytest.approx(diffs.exp().mean().item(), abs=1e-6)


def test_ratio_one_gives_minus_mean_advantage():
    adv = torch.tensor([0.5, -2.0, 3.0, 1.5])
    lp = torch.tensor([-1.0, 0.0, 2.0, -4.0], requires_grad=True)
    out = clipped_policy_loss(lp, lp.detach().clone(), adv, clip_range=1e-4)
    assert out.loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert out.clip_fraction == 0.0 and out.approx_kl == 0.0
    assert out.ratio_mean == pytest.approx(1.0)


def test_advantages_detached():
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    lp = torch.zeros(2, requires_grad=True)
    clipped_policy_loss(lp, torch.zeros(2), adv, 0.2).loss.backward()
    assert adv.grad is None and lp.grad is not None


def test_mask_excludes_entries():
    adv = torch.tensor([1.0, 2.0, 100.0, -4.0])
    lp = torch.zeros(4, requires_grad=True)
    mask = torch.tensor([True, True, False, True])
    out = clipped_policy_loss(lp, torch.zeros(4), adv, 0.1, mask=mask)
    assert out.loss.item() == pytest.approx(-(1.0 + 2.0 - 4.0) / 3, abs=1e-6)
    out.loss.backward()
    assert lp.grad[2].item() == 0.0 and lp.grad[0].item() != 0.0
    # empty mask: zero loss that still backpropagates
    lp2 = torch.zeros(4, requires_grad=True)
    out = clipped_policy_loss(lp2, torch.zeros(4), adv, 0.1, mask=torch.zeros(4, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert (lp2.grad == 0).all()


def test_diffusion_loss_is_mse():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert diffusion_loss(a, b).item() == pytest.approx((1.0 + 0.0 + 4.0 + 0.0) / 4)
