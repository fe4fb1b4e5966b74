"""The shapes world: grammar, sampling, rendering, detection, claims and the pretraining stream."""
import itertools
import json
import re

import numpy as np
import pytest

from pipeline.world import (
    ATTRIBUTES,
    COLOURS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    Scene,
    SceneStream,
    ShapeObject,
    caption_for_spec,
    caption_scene,
    check_claims,
    claim_score,
    detect,
    exact_match,
    parse_caption,
    relation_between,
    render,
    sample_scene,
    sample_spec,
    scene_accuracy,
    vocabulary,
)
from pipeline.world.scene import EDGE, GAP, OFF_AXIS_RATIO, SPEC_KINDS
from pipeline.world.vocab import RELATION_AXIS

KINDS = SPEC_KINDS


def _scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, two_object_prob=0.5) for _ in range(n)]


def _exact_rate(images, scenes) -> float:
    return float(np.mean([exact_match(detect(im), PromptSpec.from_scene(s)) for im, s in zip(images, scenes)]))


@pytest.fixture(scope="module")
def clean24():
    scenes = _scenes(0, 1000)
    return scenes, [render(s, 24) for s in scenes]


def test_renders_are_deterministic_with_right_shape_and_dtype():
    scene = _scenes(1, 1)[0]
    for resolution in (16, 24, 32):
        image = render(scene, resolution)
        assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
        assert np.array_equal(image, render(scene, resolution))
    empty_corner = render(Scene((ShapeObject("square", "red", "small", 0.8, 0.8),)), 24)[:8, :8]
    assert (empty_corner == 255).all()


def test_detector_is_exact_on_clean_renders_at_24(clean24):
    scenes, images = clean24
    assert sum(len(s.objects) == 2 for s in scenes) in range(400, 600)
    rate = _exact_rate(images, scenes)
    assert rate >= 0.99, f"clean exact match at 24 px: {rate:.3f}"


def test_detector_is_exact_on_clean_renders_at_32():
    scenes = _scenes(2, 300)
    rate = _exact_rate([render(s, 32) for s in scenes], scenes)
    assert rate >= 0.99, f"clean exact match at 32 px: {rate:.3f}"


def test_detector_survives_gaussian_noise(clean24):
    scenes, images = clean24
    rng = np.random.default_rng(3)
    noisy = [np.clip(im / 255.0 + rng.normal(0.0, 0.1, im.shape), 0.0, 1.0) for im in images]
    rate = _exact_rate(noisy, scenes)
    assert rate >= 0.95, f"exact match with noise sigma 0.1: {rate:.3f}"


def test_detector_reads_geometry():
    obj = ShapeObject("triangle", "yellow", "large", 0.3, 0.6)
    (found,) = detect(render(Scene((obj,)), 32))
    assert (found.colour, found.shape, found.size) == ("yellow", "triangle", "large")
    assert abs(found.cx - obj.cx) < 0.03 and abs(found.cy - obj.cy) < 0.03
    x0, y0, x1, y1 = found.box
    assert x0 < obj.cx * 32 < x1 and y0 < obj.cy * 32 < y1 and found.area > 0


@pytest.mark.parametrize(
    "image, blank",
    [
        (np.full((24, 24, 3), 255, np.uint8), True),
        (np.ones((24, 24, 3)), True),
        (np.full((24, 24, 3), np.nan), True),
        (np.zeros((24, 24, 3)), True),
        (np.random.default_rng(4).random((24, 24, 3)), False),
    ],
    ids=["white", "white-float", "nan", "black", "random"],
)
def test_detector_never_crashes(image, blank):
    found = detect(image)
    if blank:
        assert found == []
    spec = sample_spec(np.random.default_rng(5), "composition")
    assert 0.0 <= claim_score(found, spec) <= 1.0


def _all_specs(rng, n):
    """Specs of every kind, plus scene specs with every subset of attributes dropped."""
    specs = [sample_spec(rng, kind) for kind in KINDS for _ in range(n)]
    for scene in (sample_scene(rng) for _ in range(n)):
        for k in range(len(ATTRIBUTES) + 1):
            specs += [PromptSpec.from_scene(scene, set(drop)) for drop in itertools.combinations(ATTRIBUTES, k)]
    return specs


def test_caption_grammar_round_trips():
    specs = _all_specs(np.random.default_rng(6), 100)
    captions = {caption_for_spec(s) for s in specs}
    assert {"a shape", "a circle", "a red shape"} <= captions
    for spec in specs:
        caption = caption_for_spec(spec)
        assert parse_caption(caption) == spec
        assert caption_for_spec(parse_caption(caption)) == caption
        assert set(caption.split()) <= set(vocabulary())
    assert caption_for_spec(PromptSpec((ObjectSpec("red", "circle", "large"), ObjectSpec("blue")), "above")) == (
        "a large red circle above a blue shape"
    )
    assert vocabulary() == sorted(vocabulary()) and "left" in vocabulary() and "of" in vocabulary()


@pytest.mark.parametrize(
    "caption",
    ["a purple circle", "red circle", "a red circle near a blue square", "a red circle left of", "",
     "a red circle and a blue square and a green square", "a small"],
)
def test_parse_caption_rejects_bad_text_naming_it(caption):
    with pytest.raises(ValueError, match=re.escape(repr(caption))):
        parse_caption(caption)


def test_specs_and_scenes_serialise_to_json():
    rng = np.random.default_rng(7)
    for scene in (sample_scene(rng) for _ in range(50)):
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
        spec = PromptSpec.from_scene(scene, {"size"})
        assert PromptSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert all(o.size is None for o in spec.objects)


def test_invalid_scenes_and_specs_are_rejected():
    circle = ShapeObject("circle", "red", "small", 0.5, 0.5)
    for bad in (
        lambda: Scene((circle, circle), None),
        lambda: Scene((circle,), "above"),
        lambda: Scene((), None),
        lambda: ShapeObject("hexagon", "red", "small", 0.5, 0.5),
        lambda: ShapeObject("circle", "red", "small", 1.5, 0.5),
        lambda: ObjectSpec(colour="purple"),
        lambda: PromptSpec.from_scene(Scene((circle,)), {"position"}),
        lambda: sample_spec(np.random.default_rng(0), "everything"),
    ):
        with pytest.raises(ValueError):
            bad()


def test_sample_spec_kinds():
    rng = np.random.default_rng(8)
    for _ in range(200):
        (single,) = sample_spec(rng, "single").objects
        assert single.colour and single.shape
        comp = sample_spec(rng, "composition")
        assert comp.relation in RELATIONS and comp.objects[0] != comp.objects[1]
        assert all(o.colour and o.shape and o.size is None for o in comp.objects)
        (under,) = sample_spec(rng, "underspecified").objects
        assert (under.colour is None) != (under.shape is None) and under.size is None


def test_sample_scene_honours_its_spec():
    rng = np.random.default_rng(9)
    for kind in KINDS:
        for _ in range(100):
            spec = sample_spec(rng, kind)
            scene = sample_scene(rng, spec)
            assert scene.relation == spec.relation
            assert all(s.matches(o) for s, o in zip(spec.objects, scene.objects))
            claims = check_claims(detect(render(scene, 24)), spec)
            assert all(claims.values()), (caption_for_spec(spec), claims)


def test_relations_hold_with_a_clear_margin_inside_the_image():
    rng = np.random.default_rng(10)
    for scene in (sample_scene(rng, two_object_prob=1.0) for _ in range(500)):
        a, b = scene.objects
        for o in scene.objects:
            assert EDGE - 1e-9 <= min(o.cx, o.cy) - o.side / 2 and max(o.cx, o.cy) + o.side / 2 <= 1 - EDGE + 1e-9
        offset = np.array([a.cx - b.cx, a.cy - b.cy])
        apart = np.abs(offset) - (a.side + b.side) / 2  # box gaps along x and y
        assert apart.max() >= GAP - 1e-9  # never overlapping
        if scene.relation in RELATION_AXIS:
            axis, sign = RELATION_AXIS[scene.relation]
            assert np.sign(offset[axis]) == sign and apart[axis] >= GAP - 1e-9
            assert abs(offset[1 - axis]) <= OFF_AXIS_RATIO * abs(offset[axis]) + 1e-9


def _detected(relation="left of", colours=("red", "blue")):
    a = ShapeObject("circle", colours[0], "small", 0.25, 0.5)
    b = ShapeObject("square", colours[1], "large", 0.7, 0.45)
    return detect(render(Scene((a, b), relation), 24))


def test_check_claims_catches_wrong_colour_swapped_relation_and_missing_object():
    found = _detected()
    right = parse_caption("a red circle left of a blue square")
    assert check_claims(found, right) == {"object0": True, "object1": True, "relation": True, "count": True}
    assert claim_score(found, right) == 1.0 and exact_match(found, right)
    wrong_colour = check_claims(found, parse_caption("a green circle left of a blue square"))
    assert not wrong_colour["object0"] and wrong_colour["object1"]
    swapped = check_claims(found, parse_caption("a red circle right of a blue square"))
    assert swapped == {"object0": True, "object1": True, "relation": False, "count": True}
    assert claim_score(found, parse_caption("a blue square left of a red circle")) == pytest.approx(2 / 3)
    missing = check_claims(found[:1], right)
    assert missing["object0"] and not missing["object1"] and not missing["relation"] and not missing["count"]
    assert not exact_match(found, parse_caption("a red circle"))  # an extra object fails the count
    assert check_claims(found, parse_caption("a red circle and a blue square"))["object1"]
    assert relation_between(found[0], found[1]) == "left of" and relation_between(found[1], found[0]) == "right of"


def test_tied_assignments_prefer_the_one_with_both_objects_right():
    """Two assignments satisfy 2 of 3 claims: (red circle, blue square) in the wrong order, and
    (green triangle, blue square) in the right order. "Both objects right" must hold: some
    assignment draws both. The first one found used to win the tie."""
    from pipeline.world.detect import DetectedObject

    def at(colour, shape, cx):
        return DetectedObject(colour, shape, "small", (0, 0, 1, 1), cx, 0.5, 1)

    found = [at("green", "triangle", 0.1), at("blue", "square", 0.3), at("red", "circle", 0.7)]
    claims = check_claims(found, parse_caption("a red circle left of a blue square"))
    assert claims == {"object0": True, "object1": True, "relation": False, "count": False}
    assert claim_score(found, parse_caption("a red circle left of a blue square")) == pytest.approx(2 / 3)


def test_claim_score_is_a_share_and_scene_accuracy_averages():
    rng = np.random.default_rng(11)
    scenes = [sample_scene(rng) for _ in range(40)]
    images = [render(s, 24) for s in scenes]
    specs = [sample_spec(rng, KINDS[i % 3]) for i in range(40)]
    for image, spec in zip(images, specs):
        assert 0.0 <= claim_score(detect(image), spec) <= 1.0
    own = scene_accuracy(images, [PromptSpec.from_scene(s) for s in scenes])
    assert own == {"exact": 1.0, "claim_score": 1.0, "n": 40}
    other = scene_accuracy(images, specs)
    assert other["n"] == 40 and 0.0 <= other["exact"] < other["claim_score"] < 1.0
    with pytest.raises(ValueError):
        scene_accuracy(images, specs[:-1])


def test_training_captions_vary_detail_but_stay_true():
    rng = np.random.default_rng(12)
    colours_of_circles = set()
    for scene in (sample_scene(rng) for _ in range(2000)):
        spec = parse_caption(caption_scene(scene, rng))
        assert spec.relation == scene.relation
        assert all(s.matches(o) for s, o in zip(spec.objects, scene.objects))
        if len(scene.objects) == 2:
            assert all(o.colour and o.shape for o in spec.objects)
        elif spec.objects[0] in (ObjectSpec(shape="circle"), ObjectSpec(shape="circle", size=scene.objects[0].size)):
            colours_of_circles.add(scene.objects[0].colour)
    assert colours_of_circles == set(COLOURS)


def test_stream_is_deterministic_and_resumable():
    first, again = SceneStream(13), SceneStream(13)
    images, captions, scenes = first.next_batch(6)
    assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8 and len(captions) == len(scenes) == 6
    same = again.next_batch(6)
    assert np.array_equal(images, same[0]) and captions == same[1] and scenes == same[2]
    assert captions != SceneStream(14).next_batch(6)[1]
    state = json.loads(json.dumps(first.state_dict()))
    expected = first.next_batch(5)
    resumed = SceneStream(0, resolution=32)
    resumed.load_state_dict(state)
    got = resumed.next_batch(5)
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1] and expected[2] == got[2]
    image, caption, scene = next(iter(SceneStream(13, resolution=32)))
    assert image.shape == (32, 32, 3) and caption == captions[0] and scene == scenes[0]
    assert SHAPES and all(o.shape in SHAPES for s in scenes for o in s.objects)
