"""The web-like pretraining stream: defects, caption noise and attribute bias (pipeline/world/realism.py)."""
import json

import numpy as np
import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import ParamsError
from pipeline.params import WorldParams
from pipeline.pretraining import scene_stream
from pipeline.world.panel import QUALITIES, image_qualities
from pipeline.world import COLOURS, RELATIONS, PromptSpec, Scene, SceneStream, ShapeObject, parse_caption, render
from pipeline.world.realism import DEFECT_KINDS, Realism, apply_realism, render_with_defect

# The quality each defect is meant to spoil (the panel's names).
SPOILS = {"blur": "crisp_edges", "stray": "clean_background", "faded": "vivid_colour", "cropped": "in_frame",
          "tiny": "size"}


def test_a_clean_realism_leaves_the_stream_bitwise_unchanged():
    plain = SceneStream(7).next_batch(40)
    clean = SceneStream(7, realism=Realism()).next_batch(40)
    from_params = scene_stream(WorldParams(), 7).next_batch(40)
    for other in (clean, from_params):
        assert np.array_equal(plain[0], other[0]) and plain[1] == other[1] and plain[2] == other[2]


def test_defects_keep_the_clean_streams_scenes_and_captions():
    """Realism draws from its own generator: the scenes sampled and (without caption noise) the captions
    are those of the clean stream; only the pixels of defective items change."""
    plain = SceneStream(3).next_batch(60)
    stream = SceneStream(3, realism=Realism(defect_rate=0.5, defect_kinds={"blur": 1.0, "faded": 1.0}))
    web = stream.next_batch(60)
    assert web[1] == plain[1] and web[2] == plain[2]
    changed = [not np.array_equal(a, b) for a, b in zip(plain[0], web[0])]
    assert changed == [d is not None for d in stream.defects]
    assert 15 <= sum(changed) <= 45


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_defect_spoils_its_quality(kind):
    rng = np.random.default_rng(0)
    scenes = [Scene((ShapeObject(s, c, "large", 0.5, 0.5),)) for s in ("circle", "square") for c in COLOURS]
    clean = np.stack([render(s, 24) for s in scenes])
    spoilt = np.stack([render_with_defect(s, rng, Realism(), 24, defect=kind)[0] for s in scenes])
    prompts = [f"a large {o.colour} {o.shape}" for s in scenes for o in s.objects]
    before = image_qualities(torch.from_numpy(clean), prompts)[:, QUALITIES.index(SPOILS[kind])]
    after = image_qualities(torch.from_numpy(spoilt), prompts)[:, QUALITIES.index(SPOILS[kind])]
    assert before.mean() > 0.95
    assert after.mean() < before.mean() - 0.1, (kind, before.mean(), after.mean())


def test_defect_rate_and_kind_weights_are_honoured():
    stream = SceneStream(11, realism=Realism(defect_rate=0.6, defect_kinds={"blur": 3.0, "tiny": 1.0, "stray": 0.0}))
    stream.next_batch(800)
    defects = stream.defects
    share = np.mean([d is not None for d in defects])
    assert 0.55 < share < 0.65
    kinds = [d for d in defects if d is not None]
    assert set(kinds) == {"blur", "tiny"}
    assert 0.68 < kinds.count("blur") / len(kinds) < 0.82


def test_caption_noise_changes_what_the_caption_claims():
    rng = np.random.default_rng(5)
    two = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "small", 0.8, 0.5)),
                "left of")
    caption = "a red circle left of a blue square"
    wrong = apply_realism(two, caption, rng, Realism(wrong_relation=1.0), 24).caption
    spec = parse_caption(wrong)
    assert spec.relation in RELATIONS and spec.relation != "left of" and spec.objects == parse_caption(caption).objects
    recoloured = parse_caption(apply_realism(two, caption, rng, Realism(wrong_colour=1.0), 24).caption)
    colours = [o.colour for o in recoloured.objects]
    assert colours != ["red", "blue"] and (colours[0] == "red") != (colours[1] == "blue")
    dropped = parse_caption(apply_realism(two, caption, rng, Realism(dropped_attribute=1.0), 24).caption)
    named = sum(getattr(o, a) is not None for o in dropped.objects for a in ("colour", "shape", "size"))
    assert named == 3  # two colours and two shapes named; one dropped


def test_colour_bias_for_captions_that_leave_the_colour_unnamed():
    stream = SceneStream(2, realism=Realism(bias_colour="red", bias_share=0.6))
    _, captions, scenes = stream.next_batch(3000)
    unnamed = [s.objects[0].colour for c, s in zip(captions, scenes)
               if len(s.objects) == 1 and parse_caption(c).objects[0].colour is None]
    named = [s.objects[0].colour for c, s in zip(captions, scenes)
             if len(s.objects) == 1 and parse_caption(c).objects[0].colour is not None]
    assert len(unnamed) > 150
    assert 0.52 < unnamed.count("red") / len(unnamed) < 0.68
    assert 0.18 < named.count("red") / len(named) < 0.32  # named colours stay uniform


def test_web_like_stream_resumes_exactly():
    realism = Realism(defect_rate=0.5, wrong_colour=0.3, bias_colour="blue", bias_share=0.7)
    first = SceneStream(4, realism=realism)
    first.next_batch(7)
    state = json.loads(json.dumps(first.state_dict()))
    expected = first.next_batch(9)
    resumed = SceneStream(0, realism=realism)
    resumed.load_state_dict(state)
    got = resumed.next_batch(9)
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1] and expected[2] == got[2]


def _params(stream: dict) -> dict:
    return {"world": {"stream": stream},
            "rl": {"tasks": [{"name": "c", "reward": "composition", "prompts": "composition"}]}}


@pytest.mark.parametrize("stream, message", [
    ({"defect_kinds": {"blurr": 1.0}}, "'world.stream.defect_kinds'.*unknown defect kind 'blurr'.*did you mean 'blur'"),
    ({"defect_kinds": {"blur": -1.0}}, "'world.stream.defect_kinds'.*>= 0"),
    ({"defect_kinds": {"blur": 0.0}}, "'world.stream.defect_kinds'.*positive sum"),
    ({"defect_rate": 1.5}, "'world.stream.defect_rate'.*less than or equal to 1"),
    ({"wrong_colour": -0.1}, "'world.stream.wrong_colour'.*greater than or equal to 0"),
    ({"bias_colour": "purple"}, "'world.stream.bias_colour'.*expected one of red, green, blue, yellow"),
    ({"bias_share": 2}, "'world.stream.bias_share'"),
    ({"defect_rates": 0.5}, "unknown key 'world.stream.defect_rates'; did you mean 'world.stream.defect_rate'"),
])
def test_bad_stream_params_name_the_key(stream, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_params(stream), "p.yaml")


def test_stream_params_build_the_realism():
    params = parse_params(_params({"defect_rate": 0.3, "defect_kinds": {"cropped": 2.0}, "bias_colour": "green"}))
    realism = Realism.from_params(params.world.stream)
    assert realism == Realism(defect_rate=0.3, defect_kinds={"cropped": 2.0}, bias_colour="green")
    assert not realism.is_clean and Realism().is_clean
