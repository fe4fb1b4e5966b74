"""Adapters for real runs, scored with tiny random CLIP / OWL models saved to local folders."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from pipeline.errors import RewardLoadError  # noqa: E402
from pipeline.models.tokenizer import build_word_tokenizer  # noqa: E402
from pipeline.rewards.adapters import (  # noqa: E402
    ClipParityReward,
    ClipPreferenceReward,
    OwlDetectionReward,
    object_names,
)
from pipeline.rewards.registry import RewardContext, build_reward  # noqa: E402
from pipeline.world.vocab import vocabulary  # noqa: E402

WORDS = vocabulary() + ["photo", "of", "next", "to", "cat", "dog", "person", "light", "dark", "skin"]
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=16)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   image_size=32, patch_size=8)


def _token_ids(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = build_word_tokenizer(WORDS)
    config = CLIPConfig(text_config=dict(TINY_TEXT, **_token_ids(tokenizer)), vision_config=TINY_VISION,
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["owlv2", "owlvit"])
def owl_dir(request, tmp_path_factory):
    import transformers

    prefix = {"owlv2": "Owlv2", "owlvit": "OwlViT"}[request.param]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}")
    tokenizer = build_word_tokenizer(WORDS)
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(TINY_TEXT, **_token_ids(tokenizer)), vision_config=TINY_VISION,
        projection_dim=32)  # OWL's class head needs projection_dim == text hidden size
    getattr(transformers, f"{prefix}ForObjectDetection")(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    getattr(transformers, f"{prefix}ImageProcessor")(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_clip_preference_scores_tiny_model(clip_dir):
    reward = build_reward("clip_preference", RewardContext(options={"model": str(clip_dir)}))
    assert isinstance(reward, ClipPreferenceReward)
    prompts = ["a red circle", "a blue square left of a green triangle", "a photo of a cat"]
    scores = reward(_images(3), prompts, [{} for _ in prompts])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    again = reward(_images(3), prompts, [{} for _ in prompts])
    assert torch.equal(scores, again)
    scale = reward.model.logit_scale.exp().item()
    assert (scores.abs() <= scale + 1e-4).all()  # scale * cosine
    # image i against prompt i, as CLIP's own forward pass scores the pair
    logits = _clip_logits(clip_dir, _images(3), prompts)
    torch.testing.assert_close(scores, logits.diagonal(), rtol=1e-4, atol=1e-4)


def _clip_logits(folder, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """CLIPModel(...).logits_per_image [images, texts], straight from transformers."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=list(images.numpy()), return_tensors="pt")
    with torch.no_grad():
        return CLIPModel.from_pretrained(folder).eval()(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"],
                                                        pixel_values=pixels["pixel_values"]).logits_per_image


def test_clip_parity_equal_within_group(clip_dir):
    reward = build_reward("clip_parity", RewardContext(options={"model": str(clip_dir),
                                                                "classes": ["light skin", "dark skin", "person"]}))
    assert isinstance(reward, ClipParityReward) and reward.distribution_level
    prompts = ["a photo of a person"] * 4 + ["a photo of a cat"] * 3
    metadata = [{"group": 0}] * 4 + [{"group": 1}] * 3
    scores = reward(_images(7, seed=1), prompts, metadata)
    assert scores.shape == (7,) and torch.isfinite(scores).all()
    assert len(set(scores[:4].tolist())) == 1 and len(set(scores[4:].tolist())) == 1
    assert (scores <= 0).all() and (scores >= -1).all()
    assert set(reward.classify(_images(2))) <= set(reward.classes)
    # each group's score is minus the parity of its own images' zero-shot classes, classified by CLIP itself
    from pipeline.world.attributes import statistical_parity

    classes = [reward.classes[i] for i in _clip_logits(clip_dir, _images(7, seed=1), reward.classes).argmax(-1)]
    for rows in (range(0, 4), range(4, 7)):
        assert scores[rows[0]].item() == pytest.approx(-statistical_parity([classes[i] for i in rows], reward.classes))


def test_clip_parity_needs_classes(clip_dir):
    with pytest.raises(ValueError, match="classes"):
        build_reward("clip_parity", RewardContext(options={"model": str(clip_dir)}))


def test_owl_detection_scores_tiny_model(owl_dir):
    reward = build_reward("owl_detection", RewardContext(options={"model": str(owl_dir), "batch_size": 2}))
    assert isinstance(reward, OwlDetectionReward)
    prompts = ["a red circle left of a blue square", "a cat next to a dog", "a green triangle"]
    scores = reward(_images(3), prompts, [{} for _ in prompts])
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    confidences = reward.object_confidences(_images(3), [object_names(p) for p in prompts])
    assert [len(c) for c in confidences] == [2, 2, 1]
    assert torch.allclose(scores, torch.stack([c.mean() for c in confidences]))
    # a confidence belongs to its own query and image: reversed queries give reversed confidences, and
    # an image scored alone (another chunk, other padding) gets what it got in the batch
    names = [object_names(p) for p in prompts]
    flipped = reward.object_confidences(_images(3), [list(reversed(q)) for q in names])
    for c, f in zip(confidences, flipped):
        torch.testing.assert_close(f, c.flip(0), rtol=1e-4, atol=1e-5)
    for i in range(3):
        alone = reward.object_confidences(_images(3)[i : i + 1], names[i : i + 1])[0]
        torch.testing.assert_close(alone, confidences[i], rtol=1e-4, atol=1e-5)


def test_object_names():
    assert object_names("a red circle left of a blue square") == ["red circle", "blue square"]
    assert object_names("a large yellow shape and a green triangle") == ["large yellow shape", "green triangle"]
    assert object_names("A cat next to a dog") == ["cat", "dog"]
    assert object_names("an apple and the orange.") == ["apple", "orange"]
    assert object_names("a photo of an astronaut") == ["photo of an astronaut"]


@pytest.mark.parametrize("name", ["clip_preference", "owl_detection", "clip_parity"])
def test_offline_hub_id_error_names_the_id(name):
    hub_id = "nobody-xyz/definitely-not-cached-model"
    with pytest.raises(RewardLoadError) as error:
        options = {"model": hub_id, **({"classes": ["a", "b"]} if name == "clip_parity" else {})}
        build_reward(name, RewardContext(options=options))
    message = str(error.value)
    assert hub_id in message and "local" in message and "HF_HUB_OFFLINE" in message
