"""The gradient-agreement diagnostic: identical batches agree exactly, independent ones give a cosine."""
import re

from pipeline.rl.diagnostics import gradient_agreement, main
from tests.conftest import SMOKE_PARAMS, task_trainer


def test_the_same_batch_twice_agrees_exactly_and_fresh_noise_does_not(smoke_params, tiny_model_factory):
    trainer = task_trainer(tiny_model_factory(), smoke_params, reward="null")  # untrained: composition scores 0
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
    cosines = [float(v) for v in re.findall(r"cosine ([+-]\d\.\d+)", out)]
    assert len(cosines) == 2 and all(-1.0 <= c <= 1.0 for c in cosines)
