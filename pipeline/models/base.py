"""The `Text2ImageModel` contract: all the RL code knows about a model.

`encode_prompts` returns one tensor per prompt batch; `predict` runs the denoiser on it. How a
model packs its conditioning into that tensor is its own business (the tiny model prepends its
pooled caption embedding as token 0; Stable Diffusion passes CLIP hidden states).
"""
from __future__ import annotations

import abc
import contextlib
from pathlib import Path

import torch
from torch import nn


class Text2ImageModel(nn.Module, abc.ABC):
    """A text-conditioned diffusion model: text encoder, denoiser `unet`, `scheduler`, optional `vae`."""

    unet: nn.Module
    scheduler: object
    vae: nn.Module | None  # None in pixel space; set by every implementation
    mixed_precision: str = "no"  # "bf16": the networks run under bf16 autocast (fp32 weights and optimiser)

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning for the denoiser, one row per prompt ("" is the unconditional prompt)."""

    @abc.abstractmethod
    def predict(self, sample: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Denoiser output in the scheduler's `prediction_type` for per-sample `timesteps`."""

    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the diffusion space (pixels or latents)."""

    @abc.abstractmethod
    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """Final samples to uint8 images of shape (B, H, W, 3)."""

    @abc.abstractmethod
    def from_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, 3) to clean samples x0 in diffusion space (for L_pre)."""

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model in diffusers/transformers `save_pretrained` layout."""

    def autocast(self):
        """bf16 autocast on CUDA or the CPU when `mixed_precision` is bf16; otherwise a no-op.

        On a CPU with AVX-512 BF16 the UNet runs ~1.5x faster (bench/RESULTS.md) and a recomputed
        log-prob still equals the sampled one; callers get float32 back either way."""
        if self.mixed_precision == "bf16" and self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap_denoiser(self, wrapped: nn.Module | None) -> None:
        """Run the UNet through a wrapper (DDP, torch.compile; None: none) while `unet` stays the plain module."""
        object.__setattr__(self, "_denoiser", wrapped)  # not registered: state_dict stays the plain model's

    @property
    def denoiser(self) -> nn.Module:
        wrapped = self.__dict__.get("_denoiser")
        return self.unet if wrapped is None else wrapped

    def trainable_unet_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


def pixels_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clamped."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
