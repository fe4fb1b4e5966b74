"""The gradient-agreement diagnostic: identical batches agree exactly, independent ones give a cosine."""
from pipeline.prompts import build_corpus
from pipeline.rewards.registry import build_reward
from pipeline.rl.diagnostics import gradient_agreement, main
from pipeline.rl.run import build_trainer
from pipeline.rl.trainer import TaskRuntime
from tests.conftest import SMOKE_PARAMS


def _trainer(params, model):
    task = params.rl.tasks[0].model_copy(update={"reward": "null"})  # an untrained model scores 0 on composition
    records = build_corpus(task.prompts, params.prompts, params.seed).train
    return build_trainer(model, params, [TaskRuntime(task, build_reward(task.reward), records)], progress=False)


def test_the_same_batch_twice_agrees_exactly_and_fresh_noise_does_not(smoke_params, tiny_model_factory):
    trainer = _trainer(smoke_params, tiny_model_factory())
    same = gradient_agreement(trainer, repeats=1, seed_shift=0)
    assert abs(same["reward"][0] - 1.0) < 1e-5 and abs(same["shuffled"][0] - 1.0) < 1e-5
    fresh = gradient_agreement(trainer, repeats=2)
    assert all(-1.0 <= c < 0.999 for c in fresh["reward"] + fresh["shuffled"])
    assert all(p.grad is None for p in trainer.parameters)  # a diagnostic leaves no gradients behind


def test_cli_prints_both_cosines(smoke_workspace, capsys):
    main(["--params", str(SMOKE_PARAMS), "--model", str(smoke_workspace / "base"), "--prompts",
          str(smoke_workspace / "prompts"), "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.count("cosine") == 2 and "reward" in out and "shuffled" in out
