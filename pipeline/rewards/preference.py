"""The learned preference reward (the paper's ImageReward, in the shapes world).

`PreferenceModel` is a small conv image tower plus a caption embedding (bag of (word, object
slot) over the world vocabulary), giving one scalar score per (image, prompt);
`LearnedPreferenceReward` serves a trained one through the reward registry. Training it on
panel-labelled pairs is `pipeline.rewards.preference_training`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import RewardLoadError
from pipeline.io import atomic_path
from pipeline.rewards.registry import Reward, RewardContext, check_batch
from pipeline.world.vocab import ARTICLE, CONJUNCTION, RELATIONS, vocabulary

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KIND = "shapes_preference_model"
MAX_SLOTS = 2  # caption words are embedded per object slot: the n-th article starts slot n
_RELATION_WORDS = frozenset(w for r in RELATIONS for w in r.split()) | {CONJUNCTION}


class PreferenceModel(nn.Module):
    """Conv image tower + caption embedding -> scalar preference score per (image, prompt).

    Three paths meet in a small MLP head: (1) a conv tower at falling resolution, FiLM-modulated
    by the caption; (2) per object slot, a match map between full-resolution pixel features and a
    query embedded from that object's words (its max, mean and soft centroid: "is the named
    object there, and where"); (3) the caption embedding itself.
    """

    def __init__(self, vocab: Sequence[str] | None = None, channels: Sequence[int] = (16, 32, 64),
                 embed_dim: int = 48, hidden: int = 64, match_dim: int = 16):
        super().__init__()
        self.vocab = list(vocab) if vocab is not None else vocabulary()
        self.channels, self.embed_dim, self.hidden = tuple(int(c) for c in channels), int(embed_dim), int(hidden)
        self.match_dim = int(match_dim)
        self.index = {word: i for i, word in enumerate(self.vocab)}
        v = len(self.vocab)
        self.text = nn.Linear(v, embed_dim)
        # Each stage: conv (+ strided conv), then FiLM by the caption: x * (1 + gamma) + beta.
        self.stages = nn.ModuleList()
        self.films = nn.ModuleList()
        previous = 3
        for i, width in enumerate(self.channels):
            stride = 2 if i < len(self.channels) - 1 else 1
            self.stages.append(nn.Sequential(nn.Conv2d(previous, width, 3, padding=1), nn.SiLU(),
                                             nn.Conv2d(width, width, 3, stride=stride, padding=1)))
            film = nn.Linear(embed_dim, 2 * width)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
            self.films.append(film)
            previous = width
        self.pixels = nn.Sequential(nn.Conv2d(3, self.channels[0], 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(self.channels[0], self.match_dim, 1))
        self.queries = nn.Linear(v, self.match_dim, bias=False)
        match_features = 4 * MAX_SLOTS + 2
        self.image_proj = nn.Linear(2 * previous + match_features, hidden)
        self.text_proj = nn.Linear(embed_dim, hidden)
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    # -- inputs ---------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Bags of words: float [B, MAX_SLOTS + 1, V]: each object slot's words (the n-th article
        starts slot n; relation words excluded), then every known word. Unknown words are ignored."""
        rows, slots, columns = [], [], []
        for row, prompt in enumerate(prompts):
            slot = -1
            for word in prompt.lower().split():
                if word == ARTICLE:
                    slot += 1
                column = self.index.get(word)
                if column is None:
                    continue
                rows.append(row), slots.append(MAX_SLOTS), columns.append(column)
                if word not in _RELATION_WORDS:
                    rows.append(row), slots.append(min(max(slot, 0), MAX_SLOTS - 1)), columns.append(column)
        features = torch.zeros(len(prompts), MAX_SLOTS + 1, len(self.vocab))
        features[rows, slots, columns] = 1.0
        return features

    def _match_features(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Per slot: max, mean sigmoid and soft centroid (x, y) of the pixel-query match map; and
        the centroid offset of slot 0 from slot 1. [B, 4 * MAX_SLOTS + 2]."""
        b, _, h, w = x.shape
        maps = torch.einsum("bdhw,bsd->bshw", self.pixels(x), queries) / self.match_dim**0.5
        flat = maps.flatten(2)
        weights = flat.softmax(-1).reshape(b, -1, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        cx = (weights.sum(2) * xs).sum(-1)
        cy = (weights.sum(3) * ys).sum(-1)
        per_slot = torch.stack([flat.amax(-1), torch.sigmoid(flat).mean(-1), cx, cy], dim=-1).flatten(1)
        return torch.cat([per_slot, (cx[:, 0] - cx[:, 1])[:, None], (cy[:, 0] - cy[:, 1])[:, None]], dim=1)

    @staticmethod
    def encode_images(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]; float (B, 3, H, W) passes through."""
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {tuple(images.shape)}")
            return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return images.float()

    # -- scoring --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        device = next(self.parameters()).device
        words = self.encode_text(prompts).to(device)
        text = F.silu(self.text(words[:, MAX_SLOTS]))
        pixels = self.encode_images(images).to(device)
        x = pixels
        for stage, film in zip(self.stages, self.films):
            gamma, beta = film(text)[:, :, None, None].chunk(2, dim=1)
            x = F.silu(stage(x) * (1 + gamma) + beta)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)),
                            self._match_features(pixels, self.queries(words[:, :MAX_SLOTS]))], dim=1)
        image = F.silu(self.image_proj(pooled))
        text = F.silu(self.text_proj(text))
        return self.head(torch.cat([image, text, image * text], dim=1)).squeeze(1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Scores in eval mode, in chunks: float32 [B] on the CPU."""
        was_training = self.training
        self.eval()
        try:
            chunks = [self(images[i : i + batch_size], prompts[i : i + batch_size]).float().cpu()
                      for i in range(0, len(prompts), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0)

    # -- persistence ----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"kind": KIND, "vocab": self.vocab, "channels": list(self.channels), "embed_dim": self.embed_dim,
                "hidden": self.hidden, "match_dim": self.match_dim}

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors, written atomically (the folder appears whole or not at all)."""
        with atomic_path(directory, directory=True) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "PreferenceModel":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise RewardLoadError(
                f"no preference reward model in {str(directory)!r} (expected {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "run `dvc repro reward_model` to train it"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RewardLoadError(f"{config_path}: not valid JSON ({exc}); expected the reward_model stage's "
                                  "config: re-run `dvc repro reward_model`") from None
        if not isinstance(config, dict) or config.get("kind") != KIND:
            kind = config.get("kind") if isinstance(config, dict) else None
            raise RewardLoadError(f"{config_path}: not a shapes preference model (kind {kind!r}, expected {KIND!r})")
        try:
            model = cls(config["vocab"], config["channels"], config["embed_dim"], config["hidden"], config["match_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RewardLoadError(f"{config_path}: unusable preference model config ({type(exc).__name__}: {exc}); "
                                  "re-run `dvc repro reward_model`") from None
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except Exception as exc:  # truncated file, foreign tensors
            raise RewardLoadError(f"{weights_path}: cannot load the reward model's weights ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); expected the reward_model stage's output: re-run "
                                  "`dvc repro reward_model`") from None
        return model.to(device).eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class LearnedPreferenceReward(Reward):
    """The learned preference model's score, loaded from `context.reward_model_dir`."""

    name = "preference"
    task = "preference"

    def __init__(self, model: PreferenceModel, batch_size: int = 256):
        self.model = model.eval()
        self.batch_size = batch_size

    @classmethod
    def build(cls, context: RewardContext) -> "LearnedPreferenceReward":
        if context.reward_model_dir is None:
            raise RewardLoadError("the preference reward needs a trained reward model folder "
                                  "(RewardContext.reward_model_dir); run `dvc repro reward_model` to train it")
        return cls(PreferenceModel.from_pretrained(context.reward_model_dir, device=context.device),
                   batch_size=int(context.option("batch_size", 256)))

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> torch.Tensor:
        check_batch(images, prompts)
        return self.model.score(images, list(prompts), batch_size=self.batch_size)
