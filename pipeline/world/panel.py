"""A simulated rater panel: the hidden human preference of the shapes world.

Each rater values visible image qualities (`image_qualities`, each in [0, 1], higher is better)
with its own positive weights, drawn from a seeded Dirichlet around a shared mean; its utility
is UTILITY_SCALE * (weights . qualities). A rater compares two images by a Bradley-Terry draw:
P(a > b) = sigmoid((u(a) - u(b)) / noise).

Qualities: in_frame (share of detected objects not cut off by the border), size (objects of a
sensible side), clean_background (few inked pixels outside the detected objects), crisp_edges
(few blurred pixels among the inked ones; anti-aliased rims do not count), vivid_colour
(saturation of the object cores) and prompt_match (the detector's claim_score for the prompt).
A clean render of the prompt scores ~1 on all of them, so the panel's choices are driven by
visible defects and by what the prompt asks for.

The panel labels the reward model's training pairs and, with the same seed, judges evaluation
win rates (docs/design.md, "Contracts"): the learned reward model only ever sees its labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .attributes import spec_of
from .detect import claim_score, detect
from .scene import PromptSpec
from .vocab import BACKGROUND, COLOURS

QUALITIES = ("in_frame", "size", "clean_background", "crisp_edges", "vivid_colour", "prompt_match")
MEAN_WEIGHTS = (0.15, 0.10, 0.15, 0.15, 0.10, 0.35)  # the panel's shared taste, sums to 1
CONCENTRATION = 30.0  # Dirichlet concentration around MEAN_WEIGHTS (larger: raters agree more)
UTILITY_SCALE = 10.0  # utilities lie in [0, UTILITY_SCALE]
PANEL_SEED = 20240531  # the panel that labels reward-model pairs and judges evaluation
LABEL_SEED_OFFSET = 7919  # label draws use a seed derived from, but distinct from, the stage seed

INK = 0.1  # a pixel whose largest channel departs this far ([0, 1] units) from the background has ink
FULL_COVER = 0.9  # a border pixel this covered by an object's colour means the object is cut off
GOOD_SIDE = (0.2, 0.5)  # object side (fraction of the image) rated fully good
ZERO_SIDE = (0.05, 0.85)  # ... and falling linearly to 0 at these
STRAY_SCALE = 0.2  # clean_background = exp(-stray share / STRAY_SCALE)
EDGE_ALPHA = (0.15, 0.85)  # a coloured pixel with blend weight in this open range is an edge pixel
MUDDY_RESIDUAL = 0.2  # ... or one this far from every palette blend line
VIVID_REFERENCE = 0.8  # core saturation at or above this is fully vivid (palette colours: 0.82-0.91)

_BG = np.asarray(BACKGROUND, float) / 255
_DIRS = np.asarray(list(COLOURS.values()), float) / 255 - _BG
_NAMES = tuple(COLOURS)


def _blend(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: best palette index, its blend weight over the background, and the fit residual."""
    alpha = np.clip((pixels - _BG) @ _DIRS.T / (_DIRS**2).sum(1), 0.0, 1.0)
    residual = np.linalg.norm(pixels[..., None, :] - (_BG + alpha[..., None] * _DIRS), axis=-1)
    best = residual.argmin(-1)
    pick = best[..., None]
    return best, np.take_along_axis(alpha, pick, -1)[..., 0], np.take_along_axis(residual, pick, -1)[..., 0]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of a boolean mask (the mask itself included)."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    return np.any([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                  axis=0)


def _side_quality(side: float) -> float:
    (good_lo, good_hi), (zero_lo, zero_hi) = GOOD_SIDE, ZERO_SIDE
    if side < good_lo:
        return float(np.clip((side - zero_lo) / (good_lo - zero_lo), 0.0, 1.0))
    if side > good_hi:
        return float(np.clip((zero_hi - side) / (zero_hi - good_hi), 0.0, 1.0))
    return 1.0


def _qualities_one(image: np.ndarray, spec: PromptSpec) -> list[float]:
    h, w = image.shape[:2]
    pixels = image.astype(float) / 255.0
    best, alpha, residual = _blend(pixels)
    ink = np.abs(pixels - _BG).max(-1) > INK
    objects = detect(image)

    # Objects fully in frame and of a good size.
    in_frame, size = [], []
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        k = _NAMES.index(obj.colour)
        covered = (best == k) & (alpha >= FULL_COVER)
        ring = np.zeros((h, w), bool)
        ring[[0, -1], x0:x1] = True
        ring[y0:y1, [0, -1]] = True
        in_frame.append(0.0 if (covered & ring).any() else 1.0)
        size.append(_side_quality(max(x1 - x0, y1 - y0) / max(h, w)))

    # Clean background: few inked pixels outside the (1-pixel dilated) object boxes.
    outside = np.ones((h, w), bool)
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        outside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False
    stray = (ink & outside).sum() / max(1, outside.sum())

    # Crisp edges: few blurred pixels among the inked ones. A half-blended (or muddy) pixel is an
    # anti-aliased edge when it touches both a solid object pixel and clean background; otherwise
    # it is blur.
    if ink.any():
        soft = ((alpha > EDGE_ALPHA[0]) & (alpha < EDGE_ALPHA[1])) | (residual > MUDDY_RESIDUAL)
        solid = (alpha >= EDGE_ALPHA[1]) & (residual <= MUDDY_RESIDUAL)
        near_solid, near_clear = _dilate(solid), _dilate(~ink)
        blurred = soft & ink & ~(near_solid & near_clear)
        crisp = 1.0 - float(blurred.sum() / ink.sum())
        # Vivid colour: saturation of the more saturated half of the inked pixels (edges blend
        # with the white background, so they are left out), relative to the palette's.
        top, low = pixels.max(-1), pixels.min(-1)
        saturation = np.where(top > 0, (top - low) / np.maximum(top, 1e-6), 0.0)[ink]
        core = np.sort(saturation)[len(saturation) // 2 :]
        vivid = float(np.clip(core.mean() / VIVID_REFERENCE, 0.0, 1.0))
    else:
        crisp, vivid = 0.0, 0.0

    return [
        float(np.mean(in_frame)) if objects else 0.0,
        float(np.mean(size)) if objects else 0.0,
        float(np.exp(-stray / STRAY_SCALE)),
        crisp,
        vivid,
        claim_score(objects, spec),
    ]


def image_qualities(images: torch.Tensor | np.ndarray, prompts: Sequence[str | PromptSpec | dict]) -> torch.Tensor:
    """Visible qualities of uint8 images (B, H, W, 3) for their prompts: float32 [B, len(QUALITIES)] in [0, 1]."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {array.shape}")
    if len(array) != len(prompts):
        raise ValueError(f"got {len(array)} images but {len(prompts)} prompts")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {array.dtype}")
    rows = [_qualities_one(image, spec_of(prompt)) for image, prompt in zip(array, prompts)]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(QUALITIES))


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


class RaterPanel:
    """`n_raters` simulated raters with seeded weights; Bradley-Terry choices with temperature `noise`."""

    def __init__(self, n_raters: int = 5, noise: float = 1.0, seed: int = PANEL_SEED,
                 mean_weights: Sequence[float] = MEAN_WEIGHTS, concentration: float = CONCENTRATION):
        if n_raters < 1:
            raise ValueError(f"a panel needs at least one rater, got {n_raters}")
        if noise <= 0:
            raise ValueError(f"rater noise must be positive, got {noise}")
        mean = np.asarray(mean_weights, float)
        if mean.shape != (len(QUALITIES),) or (mean <= 0).any():
            raise ValueError(f"mean_weights must be {len(QUALITIES)} positive numbers, got {list(mean_weights)}")
        mean = mean / mean.sum()
        rng = np.random.default_rng(seed)
        self.n_raters, self.noise, self.seed = int(n_raters), float(noise), seed
        self.weights = torch.tensor(rng.dirichlet(concentration * mean, size=n_raters), dtype=torch.float32)  # [R, K]

    def rater_utilities(self, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        """Every rater's utility of every image: [R, B]."""
        return UTILITY_SCALE * self.weights @ image_qualities(images, prompts).T

    def utility(self, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        """The panel's mean utility, [B]: the absolute quality score for evaluation."""
        return self.rater_utilities(images, prompts).mean(0)

    def _check_pairs(self, images_a, images_b, prompts) -> None:
        if images_a.shape != images_b.shape:
            raise ValueError(f"pair images differ in shape: {tuple(images_a.shape)} vs {tuple(images_b.shape)}")
        if len(images_a) != len(prompts):
            raise ValueError(f"got {len(images_a)} pairs but {len(prompts)} prompts")

    def win_probabilities(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        """Each rater's P(a preferred over b): [R, N]."""
        self._check_pairs(images_a, images_b, prompts)
        diff = self.rater_utilities(images_a, prompts) - self.rater_utilities(images_b, prompts)
        return torch.sigmoid(diff / self.noise)

    def label_pairs(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
                    generator: torch.Generator | int | None = None) -> torch.Tensor:
        """One randomly chosen rater's Bradley-Terry choice per pair: int64 [N], 1 = a preferred."""
        return self.draw_labels(self.win_probabilities(images_a, images_b, prompts), generator)

    def draw_labels(self, probabilities: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """Labels from `win_probabilities` ([R, N]): per pair a random rater, then its Bradley-Terry draw."""
        g = _generator(generator)
        n = probabilities.shape[1]
        raters = torch.randint(0, self.n_raters, (n,), generator=g)
        p = probabilities[raters, torch.arange(n)]
        return (torch.rand(n, generator=g) < p).long()

    def prefer(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence,
               generator: torch.Generator | int | None = None) -> torch.Tensor:
        """As a judge: per pair, a's win in {0, 1} by one random rater, 0.5 when the images are identical."""
        labels = self.label_pairs(images_a, images_b, prompts, generator).float()
        identical = (images_a.reshape(len(images_a), -1) == images_b.reshape(len(images_b), -1)).all(1)
        return torch.where(identical, torch.full_like(labels, 0.5), labels)

    def expected_win_rate(self, images_a: torch.Tensor, images_b: torch.Tensor, prompts: Sequence) -> torch.Tensor:
        """Per pair, the panel's expected win fraction of a (mean over raters of P(a > b)); 0.5 if identical."""
        p = self.win_probabilities(images_a, images_b, prompts).mean(0)
        identical = (images_a.reshape(len(images_a), -1) == images_b.reshape(len(images_b), -1)).all(1)
        return torch.where(identical, torch.full_like(p, 0.5), p)


def label_seed(seed: int) -> int:
    """The seed of the panel's label draws for a stage seed (never the panel's own seed)."""
    value = int(seed) + LABEL_SEED_OFFSET
    return value + 1 if value == PANEL_SEED else value


def make_panel(reward_params) -> RaterPanel:
    """The fixed-seed panel of a RewardModelParams: it labels training pairs and judges evaluation."""
    return RaterPanel(reward_params.raters, reward_params.rater_noise, seed=PANEL_SEED)
