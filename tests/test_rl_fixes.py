"""Correctness of what the RL trainer hands each task: L_pre's caption dropout, independent noise for
distribution-level tasks, and a refusal to train a distribution-level task on one group."""
import pytest
import torch
import yaml

from pipeline.config import load_params, parse_params
from pipeline.models.loading import load_model
from tests.conftest import SMOKE_PARAMS, task_trainer


def _with(params, **rl):
    return params.model_copy(update={"rl": params.rl.model_copy(update=rl)})


def _diversity_params(prompts_per_iteration: int = 2, **rl):
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"]["tasks"] = [{"name": "diversity", "reward": "diversity", "prompts": "diversity",
                           "samples_per_prompt": 2, "prompts_per_iteration": prompts_per_iteration,
                           "advantage": "batch"}]
    raw["rl"].update(rl)
    return parse_params(raw)


def test_pretraining_regulariser_drops_captions_like_pretraining(smoke_workspace, monkeypatch):
    """The L_pre step used to encode every caption: the unconditional branch, which the guided RL
    gradient reaches with weight 1 - guidance, was never regularised."""
    params = load_params(SMOKE_PARAMS)
    model = load_model(smoke_workspace / "base", params)
    seen = []
    real = model.encode_prompts
    monkeypatch.setattr(model, "encode_prompts", lambda prompts: seen.append(list(prompts)) or real(prompts))

    def captions_used(dropout: float) -> list[str]:
        trainer = task_trainer(model, params)
        trainer.caption_dropout = dropout
        seen.clear()
        trainer.pretrain_step()
        return seen[-1]

    assert all(captions_used(1.0)[i] == "" for i in range(params.rl.pretrain_batch_size))
    assert all(captions_used(0.0))
    trainer = task_trainer(model, params)
    assert trainer.caption_dropout == params.pretrain.caption_dropout > 0
    half = sum(c == "" for _ in range(20) for c in captions_used(0.5))
    assert 0.35 * 20 * params.rl.pretrain_batch_size < half < 0.65 * 20 * params.rl.pretrain_batch_size


def test_distribution_level_tasks_never_share_group_noise(smoke_workspace):
    """share_group_noise starts a group's samples from one noise: right for comparing samples of one
    prompt, wrong for a reward that scores the spread of the group."""
    params = _diversity_params(share_group_noise=True)
    trainer = task_trainer(load_model(smoke_workspace / "base", params), params)
    batch, traj = trainer.sample_task(trainer.tasks[0], 0)
    assert len(set(batch.init_seeds)) == len(batch.init_seeds)
    assert not torch.equal(traj.latents[0, 0], traj.latents[1, 0])  # one group, two starts

    composition = _with(load_params(SMOKE_PARAMS), share_group_noise=True)
    trainer = task_trainer(load_model(smoke_workspace / "base", composition), composition)
    batch, traj = trainer.sample_task(trainer.tasks[0], 0)
    assert batch.init_seeds[0] == batch.init_seeds[1] and torch.equal(traj.latents[0, 0], traj.latents[1, 0])


def test_a_distribution_level_task_with_one_group_is_refused(smoke_workspace):
    params = _diversity_params(prompts_per_iteration=1)
    with pytest.raises(ValueError, match=r"rl.tasks\[0\] \(diversity\).*distribution-level.*1 group.*all-zero"):
        task_trainer(load_model(smoke_workspace / "base", params), params)


def test_deterministic_rollouts_cannot_share_group_noise():
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    raw["rl"].update(algorithm="nft", eta=0.0, share_group_noise=True)
    with pytest.raises(ValueError, match="'rl.share_group_noise' is true but 'rl.eta' is 0"):
        parse_params(raw, "p.yaml")
    raw["rl"].update(algorithm="ppo", share_group_noise=False)
    with pytest.raises(ValueError, match="rl.eta is 0 but rl.algorithm 'ppo' needs stochastic steps"):
        parse_params(raw, "p.yaml")
