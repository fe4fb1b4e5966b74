"""Shapes-world rewards: registry, composition, area, diversity and the rater panel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from pipeline.errors import UnknownRewardError  # noqa: E402
from pipeline.rewards.composition import AreaReward, CompositionReward  # noqa: E402
from pipeline.rewards.diversity import DiversityReward  # noqa: E402
from pipeline.rewards.registry import (  # noqa: E402
    RewardContext,
    build_reward,
    known_rewards,
)
from pipeline.world.attributes import (  # noqa: E402
    ATTRIBUTE_CLASSES,
    attribute_entropy,
    group_indices,
    statistical_parity,
)
from pipeline.world.captions import caption_for_spec  # noqa: E402
from pipeline.world.panel import QUALITIES, RaterPanel, image_qualities  # noqa: E402
from pipeline.world.render import render  # noqa: E402
from pipeline.world.scene import ObjectSpec, PromptSpec, Scene, ShapeObject, sample_scene, sample_spec  # noqa: E402
from pipeline.world.vocab import COLOURS  # noqa: E402

RES = 24


def _images(*scenes: Scene) -> torch.Tensor:
    return torch.from_numpy(np.stack([render(s, RES) for s in scenes]))


def _single(shape="circle", colour="red", size="large", cx=0.5, cy=0.5) -> Scene:
    return Scene((ShapeObject(shape, colour, size, cx, cy),))


def _pair(first: ShapeObject, second: ShapeObject, relation: str) -> Scene:
    return Scene((first, second), relation)


# -- registry -------------------------------------------------------------------------------------

def test_unknown_reward_lists_known_names():
    with pytest.raises(UnknownRewardError) as error:
        build_reward("composit1on")
    message = str(error.value)
    assert "composit1on" in message
    for name in known_rewards():
        assert name in message
    assert {"composition", "area", "diversity", "preference"} <= set(known_rewards())


def test_registry_builds_shapes_rewards():
    for name, cls in (("composition", CompositionReward), ("area", AreaReward), ("diversity", DiversityReward)):
        reward = build_reward(name, RewardContext())
        assert isinstance(reward, cls) and reward.name == name
    assert build_reward("diversity").distribution_level and not build_reward("composition").distribution_level
    assert build_reward("diversity", RewardContext(options={"attribute": "shape"})).attribute == "shape"


def test_every_registered_reward_is_meant_for_a_known_corpus():
    import importlib

    from pipeline.corpora import CORPORA
    from pipeline.rewards.registry import _REWARDS

    for name, (path, _) in _REWARDS.items():
        module, cls = path.split(":")
        assert getattr(importlib.import_module(module), cls).task in CORPORA, name


def test_reward_options_must_be_declared_in_the_registry():
    from pipeline.errors import UnknownRewardOptionError

    with pytest.raises(UnknownRewardOptionError, match=r"reward 'area' has no option 'gates'; its options are: gate"):
        build_reward("area", RewardContext(options={"gates": True}))
    # a reward that reads a key the registry does not declare fails at build, not silently
    with pytest.raises(KeyError, match="'count' is read but not declared"):
        RewardContext(options={}, declared=("gate",)).option("count")


# -- composition ----------------------------------------------------------------------------------

def test_composition_is_one_on_ground_truth_and_lower_when_wrong():
    spec = PromptSpec((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left of")
    prompt = caption_for_spec(spec)
    right = _pair(ShapeObject("circle", "red", "small", 0.25, 0.5), ShapeObject("square", "blue", "small", 0.75, 0.5),
                  "left of")
    wrong_colour = _pair(ShapeObject("circle", "green", "small", 0.25, 0.5),
                         ShapeObject("square", "blue", "small", 0.75, 0.5), "left of")
    swapped = _pair(ShapeObject("circle", "red", "small", 0.75, 0.5), ShapeObject("square", "blue", "small", 0.25, 0.5),
                    "right of")
    reward = CompositionReward()
    scores = reward(_images(right, wrong_colour, swapped), [prompt] * 3, [{"spec": spec.to_dict()}] * 3)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores[0] == 1.0
    assert scores[1] < 1.0 and scores[2] < 1.0
    assert ((scores >= 0) & (scores <= 1)).all()
    # Without metadata the prompt is parsed: same scores.
    assert torch.equal(reward(_images(right, wrong_colour, swapped), [prompt] * 3, [{}] * 3), scores)


def test_composition_count_option_charges_for_extra_objects():
    spec = PromptSpec((ObjectSpec("red", "circle"),), None)
    prompt = caption_for_spec(spec)
    alone = _single("circle", "red", "small", 0.3, 0.5)
    crowded = _pair(ShapeObject("circle", "red", "small", 0.3, 0.5), ShapeObject("square", "blue", "small", 0.75, 0.5),
                    "left of")
    images, rows = _images(alone, crowded), [{"spec": spec.to_dict()}] * 2
    assert CompositionReward()(images, [prompt] * 2, rows).tolist() == [1.0, 1.0]  # blind to the extra square
    counted = build_reward("composition", RewardContext(options={"count": True}))
    assert counted.count and counted(images, [prompt] * 2, rows).tolist() == [1.0, 0.5]  # object right, count wrong
    with pytest.raises(ValueError, match="option 'count' of reward 'composition' must be true or false, got 'yes'"):
        build_reward("composition", RewardContext(options={"count": "yes"}))


def test_composition_one_on_sampled_ground_truth():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, "composition") for _ in range(6)]
    images = _images(*[sample_scene(rng, s) for s in specs])
    scores = CompositionReward()(images, [caption_for_spec(s) for s in specs], None)
    assert (scores == 1.0).all()


def test_area_larger_for_large_object_and_smooth_on_empty():
    reward = AreaReward()
    blank = Scene((ShapeObject("circle", "red", "small", 0.5, 0.5),))
    images = _images(_single(size="large"), _single(size="small"), blank)
    images[2] = 255  # an empty white image: nothing detected, no palette pixels
    scores = reward(images, ["a red circle"] * 3, [{}] * 3)
    assert scores[0] > scores[1] > 0
    assert scores[2] == 0.0
    assert ((scores >= 0) & (scores <= 1)).all()
    speck = torch.full((1, RES, RES, 3), 255, dtype=torch.uint8)
    speck[0, 5, 5] = torch.tensor(COLOURS["red"], dtype=torch.uint8)  # below the detector's size floor
    assert 0 < reward(speck, ["a red circle"], [{}])[0] < scores[1]


# -- diversity ------------------------------------------------------------------------------------

def test_statistical_parity_and_entropy():
    colours = list(ATTRIBUTE_CLASSES["colour"])
    assert statistical_parity(colours * 2, colours) == 0.0
    collapsed = statistical_parity(["red"] * 8, colours)
    assert collapsed == pytest.approx((1 - 0.25) ** 2 + 3 * 0.25**2)
    # a missing object never helps: it counts for the majority class and costs its share / |A| on top
    assert statistical_parity([None] * 8, colours) == pytest.approx(collapsed + 0.25)
    seven_and_blank = statistical_parity(["red"] * 7 + [None], colours)
    assert seven_and_blank == pytest.approx(collapsed + 0.25 / 8) and seven_and_blank > collapsed
    assert statistical_parity(colours + [None] * 4, colours) > statistical_parity(colours * 2, colours)
    assert statistical_parity(["red", "green", "blue", None], colours) > statistical_parity(colours, colours)
    assert attribute_entropy(colours, colours) == pytest.approx(1.0)
    assert attribute_entropy(["red"] * 4, colours) == 0.0


def _colour_group(colours: list[str], shape: str = "circle") -> list[Scene]:
    return [_single(shape=shape, colour=c, size="small", cx=0.3 + 0.1 * (i % 4), cy=0.4) for i, c in enumerate(colours)]


def test_diversity_even_split_is_zero_and_shared_by_the_group():
    reward = DiversityReward()
    even = _colour_group(list(COLOURS) * 2)
    collapsed = _colour_group(["red"] * 8)
    prompts = ["a circle"] * 16
    metadata = [{"group": 0}] * 8 + [{"group": 1}] * 8
    scores = reward(_images(*even, *collapsed), prompts, metadata)
    assert scores.shape == (16,)
    assert torch.all(scores[:8] == 0.0)  # maximal: an even split
    assert len(set(scores[8:].tolist())) == 1  # one value for the whole minibatch
    assert scores[8] < scores[0]
    assert scores[8] == pytest.approx(-statistical_parity(["red"] * 8, list(COLOURS)))


def test_diversity_reward_never_pays_for_a_missing_object():
    """A collapsed group (8 red) beats the same group with a blank image, which beats 8 blanks."""
    reward = DiversityReward()
    red = _images(*_colour_group(["red"] * 8))
    blank = torch.full_like(red[:1], 255)
    groups = torch.cat([red, red[:7], blank, blank.expand(8, -1, -1, -1)])
    metadata = [{"group": g} for g in range(3) for _ in range(8)]
    scores = reward(groups, ["a circle"] * 24, metadata)
    collapsed, one_blank, all_blank = scores[0].item(), scores[8].item(), scores[16].item()
    assert collapsed == pytest.approx(-0.75)
    assert collapsed > one_blank > all_blank
    assert all_blank == pytest.approx(-1.0)


def test_diversity_groups_are_scored_separately():
    reward = DiversityReward()
    even, collapsed = _colour_group(list(COLOURS)), _colour_group(["blue"] * 4)
    mixed = [even[0], collapsed[0], even[1], collapsed[1], even[2], collapsed[2], even[3], collapsed[3]]
    metadata = [{"group": i % 2} for i in range(8)]
    scores = reward(_images(*mixed), ["a circle"] * 8, metadata)
    assert torch.all(scores[0::2] == 0.0) and torch.all(scores[1::2] < 0)
    # Without group ids, samples are grouped by prompt.
    assert sorted(group_indices(["a", "b", "a"], None).values()) == [[0, 2], [1]]
    assert sorted(group_indices(["a", "a", "a"], [{"group": 1}, {"group": 2}, {"group": 1}]).values()) == [[0, 2], [1]]


def test_diversity_empty_images_lower_the_score_and_attributes():
    reward = DiversityReward()
    group = _images(*_colour_group(list(COLOURS)))
    emptied = group.clone()
    emptied[3] = 255
    scores = reward(torch.cat([group, emptied]), ["a circle"] * 8, [{"group": 0}] * 4 + [{"group": 1}] * 4)
    assert scores[4] < scores[0] == 0.0
    shapes = [_single(shape=s, colour="red", size="small") for s in ("circle", "square", "triangle")]
    by_shape = DiversityReward("shape")(_images(*shapes), ["a red shape"] * 3, [{"group": 0}] * 3)
    assert torch.allclose(by_shape, torch.zeros(3))
    # "a red shape" fixes the colour: the colour reward scores the open attribute (shape) instead.
    assert torch.allclose(DiversityReward("colour")(_images(*shapes), ["a red shape"] * 3, [{"group": 0}] * 3),
                          torch.zeros(3))
    with pytest.raises(ValueError, match="attribute"):
        DiversityReward("texture")


# -- panel ----------------------------------------------------------------------------------------

def _noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def test_panel_identical_images_tie():
    panel = RaterPanel(5, 1.0, seed=3)
    rng = np.random.default_rng(1)
    specs = [sample_spec(rng, "single") for _ in range(6)]
    images = _images(*[sample_scene(rng, s) for s in specs])
    prompts = [caption_for_spec(s) for s in specs]
    outcome = panel.prefer(images, images.clone(), prompts, torch.Generator().manual_seed(0))
    assert torch.equal(outcome, torch.full((6,), 0.5))
    assert torch.allclose(panel.expected_win_rate(images, images.clone(), prompts), torch.full((6,), 0.5))


def test_panel_prefers_clean_over_heavy_noise():
    panel = RaterPanel(7, 1.0, seed=5)
    rng = np.random.default_rng(2)
    specs = [sample_spec(rng, kind) for kind in ("single", "composition") for _ in range(5)]
    clean = _images(*[sample_scene(rng, s) for s in specs])
    noisy = _noisy(clean, 70.0)
    prompts = [caption_for_spec(s) for s in specs]
    qualities = image_qualities(clean, prompts)
    assert qualities.shape == (10, len(QUALITIES)) and ((qualities >= 0) & (qualities <= 1)).all()
    per_rater = panel.rater_utilities(clean, prompts) > panel.rater_utilities(noisy, prompts)  # [R, N]
    assert per_rater.float().mean(1).min() >= 0.8  # every rater prefers the clean render on most pairs
    assert (panel.utility(clean, prompts) > panel.utility(noisy, prompts)).all()
    wins = panel.prefer(clean, noisy, prompts, torch.Generator().manual_seed(1))
    assert set(wins.unique().tolist()) <= {0.0, 1.0} and wins.mean() >= 0.8
    labels = panel.label_pairs(clean, noisy, prompts, 7)
    assert labels.dtype == torch.int64 and torch.equal(labels, panel.label_pairs(clean, noisy, prompts, 7))


def test_panel_raters_differ_but_share_a_taste():
    panel = RaterPanel(5, 1.0, seed=0)
    assert panel.weights.shape == (5, len(QUALITIES))
    assert torch.allclose(panel.weights.sum(1), torch.ones(5)) and (panel.weights > 0).all()
    assert not torch.allclose(panel.weights[0], panel.weights[1])
    assert torch.equal(RaterPanel(5, 1.0, seed=0).weights, panel.weights)
    # Wrong colour and out of frame are visible to the panel.
    spec = PromptSpec((ObjectSpec("red", "circle"),))
    images = _images(_single(colour="red"), _single(colour="blue"), _single(colour="red", cx=0.02))
    utility = panel.utility(images, [spec] * 3)
    assert utility[0] > utility[1] and utility[0] > utility[2]


def test_gated_area_pays_only_images_that_match_their_prompt():
    gated = build_reward("area", RewardContext(options={"gate": True}))
    images = _images(_single("circle", "red", "large"), _single("circle", "red", "large"),
                     _single("square", "red", "large"), _single("circle", "red", "small"))
    prompts = ["a large red circle", "a small red circle", "a large red circle", "a small red circle"]
    plain = AreaReward()(images, prompts, [{}] * 4)
    scores = gated(images, prompts, [{}] * 4)
    assert scores[0] == plain[0] > 0 and scores[3] == plain[3] > 0  # faithful: the plain area
    assert scores[1] == 0.0 and scores[2] == 0.0  # wrong size, wrong shape: nothing
    with pytest.raises(ValueError, match="option 'gate' of reward 'area' must be true or false"):
        build_reward("area", RewardContext(options={"gate": "yes"}))


def test_area_is_the_mean_object_size_so_extra_objects_do_not_pay():
    reward = AreaReward()
    one = Scene((ShapeObject("circle", "red", "small", 0.3, 0.5),))
    two = Scene((ShapeObject("circle", "red", "small", 0.3, 0.5), ShapeObject("square", "blue", "small", 0.75, 0.5)),
                "left of")
    images = torch.from_numpy(np.stack([render(one, RES), render(two, RES)]))
    scores = reward(images, ["a red circle"] * 2, [{}] * 2)
    assert abs(float(scores[1]) - float(scores[0])) < 0.2 * float(scores[0])  # not ~2x


def test_size_reward_is_neutral_to_shape():
    from pipeline.rewards.composition import SizeReward

    scenes = [Scene((ShapeObject(shape, "red", size, 0.5, 0.5),)) for size in ("large", "small")
              for shape in ("square", "triangle")]
    scores = SizeReward()(torch.from_numpy(np.stack([render(s, RES) for s in scenes])), ["a shape"] * 4, [{}] * 4)
    assert abs(float(scores[0] - scores[1])) < 0.1 * float(scores[0])  # square ~ triangle at one size
    assert float(scores[1]) > float(scores[2]) and float(scores[0]) > float(scores[3])  # large > small


def test_null_reward_is_deterministic_uniform_and_blind_to_content():
    reward = build_reward("null")
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, "single") for _ in range(200)]
    images = _images(*[sample_scene(rng, s) for s in specs])
    prompts = [caption_for_spec(s) for s in specs]
    scores = reward(images, prompts)
    assert scores.shape == (200,) and ((scores >= 0) & (scores < 1)).all()
    assert torch.equal(scores, reward(images.clone(), list(prompts)))  # same pixels and prompt, same score
    assert abs(float(scores.mean()) - 0.5) < 0.06 and float(scores.std()) > 0.2  # uniform: mean 1/2, std 0.29
    nudged = images.clone()
    nudged[:, 0, 0, 0] ^= 1  # one pixel's lowest bit
    assert not torch.isclose(reward(nudged, prompts), scores).any()



def test_faithful_area_ceiling_keeps_small_objects_below_the_size_line():
    from pipeline.evaluation.area_ceiling import area_ceilings
    from pipeline.world.detect import LARGE_SIDE

    rows = [{"prompt": p} for p in ("a small red circle", "a large blue square", "a green triangle")]
    small, large, plain = area_ceilings(rows, RES, min_side=0.2, step=0.05)
    assert small.side is not None and 0.27 <= small.side < LARGE_SIDE  # past the line it reads "large"
    assert large.side >= 0.9 and large.area > 0.8  # a square may fill the image and stay a square
    assert plain.side > LARGE_SIDE and small.area < plain.area < large.area  # a triangle fills half its box
    with pytest.raises(ValueError, match="single-object prompt"):
        area_ceilings([{"prompt": "a red circle left of a blue square"}], RES)
