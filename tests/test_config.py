"""params.yaml validation: errors name the file and dotted key, say what was expected, suggest typos."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from pipeline.errors import ParamsError
from tests.conftest import SMOKE_PARAMS

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path, mutate) -> Path:
    raw = yaml.safe_load(SMOKE_PARAMS.read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(tmp_path, mutate) -> str:
    with pytest.raises(ParamsError) as info:
        load_params(_write(tmp_path, mutate))
    return str(info.value)


def test_default_and_smoke_params_load():
    assert load_params(ROOT / "params.yaml").rl.tasks
    assert load_params(SMOKE_PARAMS).sampling.steps == 4


@pytest.mark.parametrize("path", sorted([ROOT / "params.sd2.yaml", *(ROOT / "experiments").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_shipped_params_file_loads_and_names_known_rewards(path):
    from pipeline.rewards.registry import RewardContext, build_reward, check_reward_options, known_rewards

    params = load_params(path)
    assert params.rl.tasks
    for task in params.rl.tasks:
        assert task.reward in known_rewards()
        check_reward_options(task.reward, task.reward_options)
        if task.reward in ("composition", "area", "size", "diversity", "null"):  # no model files needed
            build_reward(task.reward, RewardContext(options=task.reward_options))


def test_unknown_key_with_typo_suggestion(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"].update(learning_rate=1e-4, lr_warmup=3))
    assert "bad.yaml" in message and "unknown key 'rl.learning_rate'" in message
    message = _error(tmp_path, lambda raw: raw["pretrain"].update(stpes=3))
    assert "did you mean 'pretrain.steps'?" in message


def test_wrong_type(tmp_path):
    message = _error(tmp_path, lambda raw: raw["pretrain"].update(batch_size="sixty-four"))
    assert "'pretrain.batch_size'" in message and "integer" in message and "sixty-four" in message


def test_out_of_range(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"].update(lr=-1e-4))
    assert "'rl.lr'" in message and "greater than 0" in message


def test_nan_rejected(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"].update(clip_range=float("nan")))
    assert "'rl.clip_range'" in message and "finite" in message


def test_unknown_reward_lists_known(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"]["tasks"][0].update(reward="aesthetics"))
    assert "'rl.tasks[0].reward'" in message and "composition" in message and "diversity" in message


@pytest.mark.parametrize("name", ["params.yaml", "params.sd2.yaml", "tests/params.smoke.yaml"])
def test_params_file_has_every_key_the_dvc_stages_track(name):
    """DVC refuses to run a stage whose tracked params are missing from params.yaml (the SD recipe
    `cp params.sd2.yaml params.yaml && dvc repro` failed on 'world')."""
    raw = yaml.safe_load((ROOT / name).read_text())
    missing = []
    for stage, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for key in spec.get("params", []):
            node = raw
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{stage}: {key}")
                    break
                node = node[part]
    assert not missing, f"{name} lacks keys that dvc.yaml tracks: {missing}"


def test_misspelt_reward_option_fails_naming_the_key_and_the_known_options(tmp_path):
    """A typo such as `cont` for `count` used to train silently with the default."""
    def misspell(raw):
        raw["rl"]["tasks"][0].update(reward="composition", reward_options={"cont": True})

    message = _error(tmp_path, misspell)
    assert "'rl.tasks[0].reward_options'" in message and "'cont'" in message and "count" in message
    message = _error(tmp_path, lambda raw: raw["rl"]["tasks"][0].update(reward="null", reward_options={"gate": True}))
    assert "'gate'" in message and "takes no options" in message


def test_pretraining_regulariser_on_stable_diffusion_is_refused(tmp_path):
    """L_pre used to be skipped silently for SD (no image-caption stream); now the params fail."""
    def sd_with_beta(raw):
        raw["model"].update(kind="stable_diffusion", pretrained="some/model")
        raw["rl"]["pretrain_beta"] = 0.02

    message = _error(tmp_path, sd_with_beta)
    assert "'rl.pretrain_beta' is 0.02" in message and "rl.pretrain_beta: 0" in message


def test_nested_list_key_path(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"]["tasks"][0].update(samples_per_prompt=0))
    assert "'rl.tasks[0].samples_per_prompt'" in message


def test_empty_task_list(tmp_path):
    message = _error(tmp_path, lambda raw: raw["rl"].update(tasks=[]))
    assert "'rl.tasks'" in message and "at least 1" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("rl: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_stage_fails_fast_with_one_line_and_no_output(tmp_path):
    params = _write(tmp_path, lambda raw: raw["rl"].update(lr="fast"))
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "stages.prompts", "--params", str(params), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert time.time() - started < 5 + 10  # interpreter start + imports; the check itself is instant
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: stage prompts:")
    assert "'rl.lr'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_largest_corpus_bound_is_what_the_grammar_yields():
    from pipeline.config import corpus_capacity
    from pipeline.corpora import CORPORA
    from pipeline.prompts import enumerate_specs

    assert corpus_capacity() == max(len(enumerate_specs(corpus)) for corpus in CORPORA)
