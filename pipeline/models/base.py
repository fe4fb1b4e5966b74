"""The `Text2ImageModel` contract: all the RL code knows about a model.

`encode_prompts` returns one tensor per prompt batch; `predict` runs the denoiser on it. How a
model packs its conditioning into that tensor is its own business (the tiny model prepends its
pooled caption embedding as token 0; Stable Diffusion passes CLIP hidden states).
"""
from __future__ import annotations

import abc
import copy
from pathlib import Path

import torch
from torch import nn

from pipeline.runtime import autocast

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # the UNet's attention projections, as DDPO's LoRA


class Text2ImageModel(nn.Module, abc.ABC):
    """A text-conditioned diffusion model: text encoder, denoiser `unet`, `scheduler`, optional `vae`."""

    unet: nn.Module
    scheduler: object
    vae: nn.Module | None  # None in pixel space; set by every implementation
    mixed_precision: str = "no"  # "bf16": the networks run under bf16 autocast (fp32 weights and optimiser)
    lora_rank: int = 0  # > 0: rank of the LoRA adapters on the UNet (`enable_lora`); 0 = full fine-tune

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
        return autocast(self.device, self.mixed_precision)

    def wrap_denoiser(self, wrapped: nn.Module | None) -> None:
        """Run the UNet through a wrapper (DDP, torch.compile; None: none) while `unet` stays the plain module."""
        object.__setattr__(self, "_denoiser", wrapped)  # not registered: state_dict stays the plain model's

    @property
    def denoiser(self) -> nn.Module:
        wrapped = self.__dict__.get("_denoiser")
        return self.unet if wrapped is None else wrapped

    def trainable_unet_parameters(self) -> list[nn.Parameter]:
        """The LoRA parameters with LoRA on; every UNet parameter otherwise (full fine-tune)."""
        return [p for p in self.unet.parameters() if p.requires_grad]

    def enable_lora(self, rank: int) -> None:
        """Freeze the UNet and add trainable rank-`rank` LoRA adapters (peft) on its attention
        projections. B = 0 at init, so the model's outputs are unchanged until a step is taken."""
        from peft import LoraConfig

        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if self.lora_rank:
            raise ValueError(f"this model already has rank-{self.lora_rank} LoRA adapters")
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS),
                                         init_lora_weights="gaussian"))
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_("lora_" in name)
        self.lora_rank = rank

    def plain_unet(self) -> nn.Module:
        """The UNet with any LoRA adapters fused into its weights (a copy; `self.unet` is untouched),
        so a saved model is a plain diffusers UNet whoever loads it; its config names no source folder."""
        if not getattr(self.unet, "_hf_peft_config_loaded", False):
            return without_source_path(self.unet)
        fused = copy.deepcopy(self.unet)
        fused.fuse_lora()
        fused.unload_lora()
        return without_source_path(fused)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


def pixels_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clamped."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def without_source_path(module: nn.Module) -> nn.Module:
    """`module` with `_name_or_path` (the folder diffusers loaded it from) dropped from its config, so
    the same weights save to the same bytes wherever they were loaded from (dvc.lock stays unchanged)."""
    config = getattr(module, "_internal_dict", None)
    if config is not None and "_name_or_path" in config:
        from diffusers.configuration_utils import FrozenDict

        module._internal_dict = FrozenDict({k: v for k, v in config.items() if k != "_name_or_path"})
    return module
