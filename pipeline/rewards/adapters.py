"""Rewards for real runs (Stable Diffusion): CLIP preference, OWL detection, CLIP fairness parity.

Each loads a transformers model by hub id or local folder from `context.options["model"]`
(optionally the tokenizer / image processor from `context.options["processor"]`). A hub id that
is not in the local cache while offline fails with a `RewardLoadError` that names the id and
says how to provide a local folder instead.

- `clip_preference`: PickScore-style score, logit_scale.exp() * cosine(image, prompt).
- `owl_detection`: mean over the objects a prompt names of the best box confidence (sigmoid of
  the class logit) for that object's text query (OWLv2 or OWL-ViT).
- `clip_parity` (distribution-level): CLIP zero-shot classes of each image among
  `context.options["classes"]`; reward = minus the statistical parity of each prompt group,
  given to every sample of the group.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.world.attributes import group_indices, statistical_parity
from pipeline.errors import RewardLoadError, RewardOptionError
from pipeline.rewards.registry import Reward, RewardContext, check_batch, numpy_images

DEFAULT_CLIP_PREFERENCE = "yuvalkirstain/PickScore_v1"
DEFAULT_CLIP_PREFERENCE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
DEFAULT_OWL = "google/owlv2-base-patch16-ensemble"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_BATCH_SIZE = 16
DEFAULT_QUERY_TEMPLATE = "a photo of a {}"
_ARTICLES = ("a", "an", "the")
_JOINERS = (" next to ", " and ")


def _load(loader: Callable[..., Any], source: str, what: str, **kwargs) -> Any:
    """`loader(source)`, turning "not found / offline" OSErrors into a RewardLoadError."""
    try:
        return loader(source, **kwargs)
    except OSError as error:
        if Path(source).exists():
            raise RewardLoadError(f"cannot load the {what} from local folder {source!r}: {error}") from error
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        mode = "offline (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache" if offline else \
            "it could not be downloaded or found in the local Hugging Face cache"
        raise RewardLoadError(
            f"cannot load the {what} {source!r}: it is not a local folder, and {mode}. "
            f"Download it once with `huggingface-cli download {source}` (with network access), or save it "
            f"with `save_pretrained(<folder>)` and set the reward option `model` to that local path."
        ) from error


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings from `get_*_features` (a tensor, or an output whose pooler_output holds them)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _max_text_length(tokenizer, text_config) -> int:
    limit = int(getattr(text_config, "max_position_embeddings", 77))
    model_max = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, model_max))


class _ProcessorParts:
    """A tokenizer and an image processor loaded from one source."""

    def __init__(self, source: str, what: str):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = _load(AutoTokenizer.from_pretrained, source, f"{what} tokenizer")
        self.image_processor = _load(AutoImageProcessor.from_pretrained, source, f"{what} image processor")

    def pixels(self, images: torch.Tensor, device: str) -> torch.Tensor:
        out = self.image_processor(images=list(numpy_images(images)), return_tensors="pt")
        return out["pixel_values"].to(device)


class _ClipBase(Reward):
    """Shared CLIP loading and embedding."""

    default_model = DEFAULT_CLIP
    default_processor: str | None = None

    def __init__(self, model_source: str, processor_source: str | None = None, device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE):
        from transformers import CLIPModel

        self.source = model_source
        self.device = device
        self.batch_size = int(batch_size)
        self.model = _load(CLIPModel.from_pretrained, model_source, "CLIP model").to(device).eval()
        self.parts = _ProcessorParts(processor_source or model_source, "CLIP")
        self.max_length = _max_text_length(self.parts.tokenizer, self.model.config.text_config)

    @classmethod
    def _sources(cls, context: RewardContext) -> dict:
        return dict(
            model_source=context.option("model", cls.default_model),
            processor_source=context.option("processor", cls.default_processor),
            device=context.device,
            batch_size=context.option("batch_size", DEFAULT_BATCH_SIZE),
        )

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.parts.pixels(images[start : start + self.batch_size], self.device)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float())
        embeds = torch.cat(chunks)
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.parts.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                          max_length=self.max_length, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_features(self.model.get_text_features(**tokens)).float())
        embeds = torch.cat(chunks)
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class ClipPreferenceReward(_ClipBase):
    """PickScore-style preference: logit_scale.exp() * cosine(image embeds, prompt embeds)."""

    name = "clip_preference"
    task = "preference"
    default_model = DEFAULT_CLIP_PREFERENCE
    default_processor = None  # PickScore ships its processor files; set options["processor"] otherwise

    @classmethod
    def build(cls, context: RewardContext) -> "ClipPreferenceReward":
        return cls(**cls._sources(context))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        if len(prompts) == 0:
            return torch.zeros(0)
        cosine = (self.image_embeds(images) * self.text_embeds(list(prompts))).sum(-1)
        return (self.model.logit_scale.exp().float() * cosine).float().cpu()


class ClipParityReward(_ClipBase):
    """Negative statistical parity of CLIP zero-shot classes over each prompt's group of samples."""

    name = "clip_parity"
    task = "diversity"
    distribution_level = True

    def __init__(self, model_source: str, classes: list[str], processor_source: str | None = None,
                 device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, template: str = "{}"):
        classes = list(classes or [])
        if len(classes) < 2:
            raise RewardOptionError(f"clip_parity needs options['classes'], a list of at least 2 text labels; "
                                    f"got {classes}")
        super().__init__(model_source, processor_source, device, batch_size)
        self.classes = classes
        self.class_embeds = self.text_embeds([template.format(c) for c in classes])

    @classmethod
    def build(cls, context: RewardContext) -> "ClipParityReward":
        return cls(classes=context.option("classes"), template=context.option("template", "{}"),
                   **cls._sources(context))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> list[str]:
        """The zero-shot class (one of `self.classes`) of each image."""
        if len(images) == 0:
            return []
        logits = self.image_embeds(images) @ self.class_embeds.T
        return [self.classes[i] for i in logits.argmax(-1).tolist()]

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        predicted = self.classify(images)
        rewards = torch.zeros(len(prompts), dtype=torch.float32)
        for rows in group_indices(prompts, metadata).values():
            rewards[rows] = -statistical_parity([predicted[i] for i in rows], self.classes)
        return rewards


def object_names(prompt: str) -> list[str]:
    """The objects a prompt names: shapes-world captions via `parse_caption`, else a generic split.

    Generic: "a {obj1} next to a {obj2}" / "a {obj1} and a {obj2}" -> [obj1, obj2] with leading
    articles removed; any other prompt is one object (itself, article removed).
    """
    from pipeline.world.captions import parse_caption
    from pipeline.world.vocab import GENERIC_SHAPE

    try:
        spec = parse_caption(prompt)
    except ValueError:
        spec = None
    if spec is not None:
        names = []
        for obj in spec.objects:
            words = [obj.size, obj.colour, obj.shape or GENERIC_SHAPE]
            names.append(" ".join(w for w in words if w))
        return names
    text = " ".join(prompt.strip().split())
    parts = [text]
    lowered = text.lower()
    for joiner in _JOINERS:
        at = lowered.find(joiner)
        if at > 0:
            parts = [text[:at], text[at + len(joiner) :]]
            break
    names = []
    for part in parts:
        part = part.strip().strip(".,;:!?").strip()
        part = re.sub(rf"^(?:{'|'.join(_ARTICLES)})\s+", "", part, flags=re.IGNORECASE)
        if part:
            names.append(part)
    return names or [text]


class OwlDetectionReward(Reward):
    """Mean over the prompt's named objects of the best OWL box confidence for that object's query."""

    name = "owl_detection"
    task = "composition"

    def __init__(self, model_source: str = DEFAULT_OWL, processor_source: str | None = None, device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, query_template: str = DEFAULT_QUERY_TEMPLATE):
        from transformers import AutoConfig, Owlv2ForObjectDetection, OwlViTForObjectDetection

        config = _load(AutoConfig.from_pretrained, model_source, "OWL model config")
        classes = {"owlv2": Owlv2ForObjectDetection, "owlvit": OwlViTForObjectDetection}
        if config.model_type not in classes:
            raise RewardLoadError(f"{model_source!r} is a {config.model_type!r} model; owl_detection needs "
                                  f"an OWLv2 or OWL-ViT model ({', '.join(classes)})")
        self.source = model_source
        self.device = device
        self.batch_size = int(batch_size)
        self.query_template = query_template
        self.model = _load(classes[config.model_type].from_pretrained, model_source, "OWL model").to(device).eval()
        self.parts = _ProcessorParts(processor_source or model_source, "OWL")
        self.max_length = _max_text_length(self.parts.tokenizer, self.model.config.text_config)

    @classmethod
    def build(cls, context: RewardContext) -> "OwlDetectionReward":
        return cls(
            model_source=context.option("model", DEFAULT_OWL),
            processor_source=context.option("processor"),
            device=context.device,
            batch_size=context.option("batch_size", DEFAULT_BATCH_SIZE),
            query_template=context.option("query_template", DEFAULT_QUERY_TEMPLATE),
        )

    @torch.no_grad()
    def object_confidences(self, images: torch.Tensor, queries: list[list[str]]) -> list[torch.Tensor]:
        """Per image, the best box confidence for each of its text queries."""
        out: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            width = max(len(q) for q in chunk)
            padded = [q + [" "] * (width - len(q)) for q in chunk]  # as the OWL processors pad
            texts = [self.query_template.format(t) if t.strip() else t for q in padded for t in q]
            tokens = self.parts.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                          return_tensors="pt")
            pixels = self.parts.pixels(images[start : start + self.batch_size], self.device)
            result = self.model(input_ids=tokens["input_ids"].to(self.device), pixel_values=pixels,
                                attention_mask=tokens["attention_mask"].to(self.device))
            best = torch.sigmoid(result.logits.float()).amax(dim=1).cpu()  # (b, width)
            out.extend(best[i, : len(q)] for i, q in enumerate(chunk))
        return out

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        if len(prompts) == 0:
            return torch.zeros(0)
        confidences = self.object_confidences(images, [object_names(p) for p in prompts])
        return torch.stack([c.mean() for c in confidences]).float()
