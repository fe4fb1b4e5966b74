"""The learned preference reward: trained on panel-labelled pairs of corrupted world renders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from pipeline.params import RewardModelParams, SamplingParams, WorldParams  # noqa: E402
from pipeline.errors import RewardLoadError  # noqa: E402
from pipeline.rewards.preference import LearnedPreferenceReward, PreferenceModel, num_parameters  # noqa: E402
from pipeline.rewards.preference_data import (  # noqa: E402
    build_pairs,
    render_pairs,
    sample_group_pairs,
    source_counts,
    vote,
    win_probabilities,
)
from pipeline.rewards.preference_training import (  # noqa: E402
    fit_reward_model,
    mirror_prompt,
    pair_accuracy,
    panel_best_accuracy,
    panel_self_agreement,
    split_indices,
    train_preference_model,
)
from pipeline.rewards.registry import RewardContext, build_reward  # noqa: E402
from pipeline.world.captions import caption_for_spec  # noqa: E402
from pipeline.world.panel import PANEL_SEED, RaterPanel, label_seed, make_panel  # noqa: E402
from pipeline.world.realism import Realism  # noqa: E402
from pipeline.world.render import render  # noqa: E402
from pipeline.world.scene import Scene, ShapeObject, sample_scene, sample_spec  # noqa: E402
from pipeline.world.vocab import COLOURS  # noqa: E402

RES = 24
CORRUPTIONS = ("clean", "noise", "blur", "shift", "colour", "desaturate")
PAIRS, HOLDOUT, EPOCHS, LR, BATCH = 900, 0.5, 25, 2e-3, 32


def _blur(image: np.ndarray, passes: int) -> np.ndarray:
    x = image.astype(float)
    for _ in range(passes):
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + p[1:-1, 1:-1]) / 5
    return np.rint(x).astype(np.uint8)


def corrupt(scene: Scene, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A render of `scene` with one corruption: noise, blur, an object pushed out of frame,
    an object in the wrong colour, or washed-out colour ("clean": none)."""
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    if kind == "shift":
        inside = o.side / 2 * (1 - rng.uniform(0.6, 1.0))  # centre this far inside the border
        edge = int(rng.integers(4))
        cx = inside if edge == 0 else 1 - inside if edge == 1 else o.cx
        cy = inside if edge == 2 else 1 - inside if edge == 3 else o.cy
        objects[i] = ShapeObject(o.shape, o.colour, o.size, cx, cy)
    elif kind == "colour":
        others = [c for c in COLOURS if c != o.colour]
        objects[i] = ShapeObject(o.shape, others[int(rng.integers(len(others)))], o.size, o.cx, o.cy)
    image = render(Scene(tuple(objects), scene.relation), RES)
    if kind == "noise":
        return np.clip(image + rng.normal(0, rng.uniform(10, 80), image.shape), 0, 255).astype(np.uint8)
    if kind == "blur":
        return _blur(image, int(rng.integers(1, 4)))
    if kind == "desaturate":
        a = rng.uniform(0.3, 0.8)
        return np.rint(image * (1 - a) + a * image.mean(-1, keepdims=True)).astype(np.uint8)
    return image


def corrupted_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n pairs: one prompt, one scene, two different corruptions of its render."""
    rng = np.random.default_rng(seed)
    a, b, prompts = [], [], []
    for _ in range(n):
        spec = sample_spec(rng, ("single", "composition")[int(rng.integers(2))])
        scene = sample_scene(rng, spec)
        ka, kb = rng.choice(len(CORRUPTIONS), 2, replace=False)
        a.append(corrupt(scene, CORRUPTIONS[ka], rng))
        b.append(corrupt(scene, CORRUPTIONS[kb], rng))
        prompts.append(caption_for_spec(spec))
    return torch.from_numpy(np.stack(a)), torch.from_numpy(np.stack(b)), prompts


@pytest.fixture(scope="module")
def trained():
    images_a, images_b, prompts = corrupted_pairs(PAIRS, seed=1)
    panel = RaterPanel(5, 1.0, seed=PANEL_SEED)
    labels = panel.label_pairs(images_a, images_b, prompts, torch.Generator().manual_seed(label_seed(0)))
    model, metrics = train_preference_model(images_a, images_b, prompts, labels, epochs=EPOCHS, lr=LR,
                                            batch_size=BATCH, holdout_fraction=HOLDOUT, seed=0)
    _, held = split_indices(PAIRS, HOLDOUT, 0)
    metrics["panel_self_agreement"] = panel_self_agreement(panel, images_a, images_b, prompts, seed=11)
    metrics["panel_best_accuracy"] = panel_best_accuracy(panel, images_a[held], images_b[held],
                                                         [prompts[i] for i in held], labels[held])
    print(f"\npreference model on corrupted renders: {json.dumps(metrics, sort_keys=True)}")
    return model, metrics, (images_a, images_b, prompts, labels)


def test_learned_model_approaches_panel_self_agreement(trained):
    _, metrics, _ = trained
    assert 50_000 <= metrics["parameters"] <= 200_000
    assert metrics["heldout_pairs"] == PAIRS * HOLDOUT
    assert metrics["panel_best_accuracy"] >= metrics["panel_self_agreement"] - 0.05  # the ceiling
    assert metrics["heldout_accuracy"] >= metrics["panel_self_agreement"] - 0.10
    assert metrics["heldout_accuracy"] > 0.6


def test_save_load_round_trip_and_reward(trained, tmp_path):
    model, _, (images_a, _, prompts, _) = trained
    folder = tmp_path / "reward"
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = PreferenceModel.from_pretrained(folder)
    images, texts = images_a[:40], prompts[:40]
    assert torch.equal(loaded.score(images, texts), model.score(images, texts))
    reward = build_reward("preference", RewardContext(reward_model_dir=folder))
    assert isinstance(reward, LearnedPreferenceReward) and reward.task == "preference"
    scores = reward(images, texts, [{} for _ in texts])
    assert scores.dtype == torch.float32 and torch.equal(scores, model.score(images, texts))
    model.save_pretrained(folder)  # overwriting an existing folder works too
    assert torch.equal(PreferenceModel.from_pretrained(folder).score(images, texts), scores)


def test_missing_reward_model_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "models" / "reward"
    with pytest.raises(RewardLoadError) as error:
        build_reward("preference", RewardContext(reward_model_dir=folder))
    assert str(folder) in str(error.value) and "dvc repro reward_model" in str(error.value)
    with pytest.raises(RewardLoadError, match="dvc repro reward_model"):
        build_reward("preference", RewardContext())


def test_bradley_terry_pieces():
    assert pair_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1, 1, 0])) \
        == pytest.approx((1 + 0 + 0.5) / 3)
    assert mirror_prompt("a red circle left of a blue square") == "a red circle right of a blue square"
    train, held = split_indices(10, 0.3, 0)
    assert len(held) == 3 and sorted([*train, *held]) == list(range(10))
    assert 50_000 <= num_parameters(PreferenceModel()) <= 200_000
    text = PreferenceModel().encode_text(["a red circle left of a blue square"])
    assert text.shape[1] == 3 and text[0, 2].sum() == 7  # every known word once in the full bag


def test_fit_reward_model_on_a_tiny_diffusion_model(tiny_model_factory):
    model = tiny_model_factory()
    records = [{"prompt": p} for p in ("a red circle", "a blue square and a green triangle", "a circle")]
    realism = Realism(defect_rate=0.5)
    group = sample_group_pairs(model, records, 7, 3, seed=0, steps=2, guidance=2.0, batch_size=8)
    assert group["images_a"].shape == (7, RES, RES, 3) and group["images_a"].dtype == torch.uint8
    assert set(group["prompts"]) <= {r["prompt"] for r in records} and len(group["prompts"]) == 7
    # groups of 3 samples of one prompt give 3 pairs each: pairs 0-2 share a prompt, as do 3-5
    assert len(set(group["prompts"][:3])) == 1 and len(set(group["prompts"][3:6])) == 1
    again = sample_group_pairs(model, records, 7, 3, seed=0, steps=2, guidance=2.0, batch_size=8)
    assert torch.equal(again["images_b"], group["images_b"])
    assert source_counts(10, {"group": 0.3, "stream": 0.5, "mismatch": 0.2}) == {"group": 3, "stream": 5,
                                                                                "mismatch": 2}
    assert sum(source_counts(7, {"group": 1, "stream": 1, "mismatch": 1}).values()) == 7

    params = RewardModelParams(pairs=12, sources={"group": 0.5, "stream": 0.25, "mismatch": 0.25}, group_size=3,
                               votes=3, raters=3, epochs=1, batch_size=8, holdout_fraction=0.5)
    world = WorldParams(stream={"defect_rate": 0.5})
    sampling = SamplingParams(steps=2, guidance=2.0)
    reward_model, metrics = fit_reward_model(model, records, params, sampling, world, seed=0)
    assert isinstance(reward_model, PreferenceModel)
    assert metrics["pairs"] == 12 and metrics["train_pairs"] == 6 and metrics["votes"] == 3
    assert sum(metrics[f"{s}.heldout_pairs"] for s in ("group", "stream", "mismatch")) == 6
    for key in ("heldout_accuracy", "panel_self_agreement", "panel_best_accuracy", "label_mean",
                "heldout_agreement_noise_free"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["accuracy_gap"] == pytest.approx(metrics["panel_best_accuracy"] - metrics["heldout_accuracy"])
    # the held-out accuracy, recomputed from the same pairs, one fresh rater's choices and the same split
    pairs = build_pairs(model, records, params, sampling, realism, RES, seed=0)
    assert pairs["source"] == ["group"] * 6 + ["stream"] * 3 + ["mismatch"] * 3
    a, b, names = pairs["images_a"], pairs["images_b"], list(pairs["prompts"])
    _, held = split_indices(12, 0.5, 0)
    held_names = [names[i] for i in held]
    choice = vote(make_panel(params), a[held], b[held], held_names, 1,
                  torch.Generator().manual_seed(label_seed(0) + 2))
    expected = pair_accuracy(reward_model.score(a[held], held_names), reward_model.score(b[held], held_names),
                             choice)
    assert metrics["heldout_accuracy"] == pytest.approx(expected)
    votes = vote(make_panel(params), a, b, names, 3, torch.Generator().manual_seed(label_seed(0)))
    assert metrics["label_mean"] == pytest.approx(float(votes.mean()))
    assert set((votes * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0} and torch.allclose(votes * 3, (votes * 3).round())


def test_stream_and_mismatch_pairs_teach_what_the_panel_values():
    """Stream pairs differ by defects (same prompt met), mismatch pairs by prompt match; the panel
    prefers the defect-free and the matching image."""
    records = [{"prompt": p} for p in ("a red circle", "a large blue square", "a green triangle")]
    panel = RaterPanel(5, 1.0, seed=PANEL_SEED)
    mismatch = render_pairs(records, 60, Realism(), RES, seed=0, mismatch=True)
    utility_a = panel.utility(mismatch["images_a"], mismatch["prompts"])
    utility_b = panel.utility(mismatch["images_b"], mismatch["prompts"])
    assert (utility_a - utility_b).abs().mean() > 1.5  # one of the two misses the prompt
    clean = render_pairs(records, 60, Realism(), RES, seed=0, mismatch=False)
    assert (panel.utility(clean["images_a"], clean["prompts"]) > 9.5).all()  # clean renders that match
    spoilt = render_pairs(records, 60, Realism(defect_rate=1.0), RES, seed=0, mismatch=False)
    assert panel.utility(spoilt["images_a"], spoilt["prompts"]).mean() < 9.0


def test_labelling_in_chunks_gives_every_pair_the_same_probability_and_prints_progress(capsys):
    """The reward model's labels are computed in chunks (with progress lines): each pair's panel
    probabilities, and so the votes drawn from them, equal the one-call ones."""
    records = [{"prompt": p} for p in ("a red circle", "a large blue square", "a green triangle")]
    pairs = render_pairs(records, 11, Realism(defect_rate=0.5), RES, seed=1, mismatch=False)
    panel = RaterPanel(5, 1.0, seed=PANEL_SEED)
    a, b, prompts = pairs["images_a"], pairs["images_b"], pairs["prompts"]
    whole = panel.win_probabilities(a, b, prompts)
    chunked = win_probabilities(panel, a, b, prompts, progress=True, chunk=4)
    assert chunked.shape == whole.shape == (5, 11)
    assert torch.equal(chunked, whole)
    assert "labelling pairs: pair 11/11 (100%)" in capsys.readouterr().out
    votes = vote(panel, a, b, prompts, 3, torch.Generator().manual_seed(5))
    assert torch.equal(vote(panel, a, b, prompts, 3, torch.Generator().manual_seed(5), chunked), votes)


@pytest.mark.parametrize("bad, message", [
    ({"sources": {"groups": 1.0}}, r"'reward_model.sources'.*unknown pair source 'groups' \(did you mean 'group'\?\)"),
    ({"sources": {"group": -1.0, "stream": 2.0}}, "'reward_model.sources'.*>= 0"),
    ({"sources": {"group": 0.0}}, "'reward_model.sources'.*positive sum"),
    ({"votes": 0}, "'reward_model.votes'"),
    ({"group_size": 1}, "'reward_model.group_size'"),
    ({"channels": [16, 32]}, "'reward_model.channels\\[2\\]'"),
])
def test_bad_reward_model_params_name_the_key(bad, message):
    from pipeline.config import parse_params
    from pipeline.errors import ParamsError

    raw = {"reward_model": bad, "rl": {"tasks": [{"name": "c", "reward": "composition", "prompts": "composition"}]}}
    with pytest.raises(ParamsError, match=message):
        parse_params(raw, "p.yaml")


def test_bf16_training_keeps_float32_weights_is_reproducible_and_learns(trained):
    """`mixed_precision="bf16"` (the reward_model stage passes the base model's) trains the forward passes
    under bf16 autocast: the weights stay float32, a second run gives the same model, and it learns as
    float32 training does on the same pairs."""
    _, fp32_metrics, (images_a, images_b, prompts, labels) = trained

    def fit():
        return train_preference_model(images_a, images_b, prompts, labels, epochs=EPOCHS, lr=LR, batch_size=BATCH,
                                      holdout_fraction=HOLDOUT, seed=0, mixed_precision="bf16")

    (model, metrics), (again, _) = fit(), fit()
    weights = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in weights.values())
    assert all(torch.equal(p, dict(again.named_parameters())[name]) for name, p in weights.items())
    reference = PreferenceModel()  # a float32 fit of the same pairs ends elsewhere: the autocast was used
    reference.load_state_dict(trained[0].state_dict())
    assert not all(torch.equal(p, dict(reference.named_parameters())[name]) for name, p in weights.items())
    assert metrics["heldout_accuracy"] > 0.6
    assert abs(metrics["heldout_accuracy"] - fp32_metrics["heldout_accuracy"]) < 0.05
