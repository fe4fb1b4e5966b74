"""Multi-process training through accelerate (DDP): the trainer's `Distributed` hooks.

Under `accelerate launch` every process samples its own prompts with its own noise (seeded by
process index), rewards are gathered across processes before normalisation (the paper's global
batch statistics), gradients are averaged by DDP, and only the main process writes. On CPU:
`accelerate launch --multi_gpu --num_processes 2 -m stages.finetune ...` runs gloo processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.models.base import Text2ImageModel


@dataclass
class Distributed:
    """What the trainer needs from a multi-process launcher (accelerate); identity on one process."""

    process_index: int = 0
    num_processes: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()
    clip_grad_norm: Callable | None = None
    is_main: bool = True
    barrier: Callable[[], None] = lambda: None


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(model: Text2ImageModel, device: str) -> Distributed:
    """Wrap the UNet in DDP through accelerate when launched with several processes; else identity."""
    if not launched_distributed():
        return Distributed()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not device.startswith("cuda"))
    model.to(accelerator.device)
    model.wrap_denoiser(accelerator.prepare_model(model.unet))

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        return accelerator.gather(tensor.to(accelerator.device)).cpu()

    return Distributed(
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        gather=gather,
        backward=accelerator.backward,
        clip_grad_norm=accelerator.clip_grad_norm_,
        is_main=accelerator.is_main_process,
        barrier=accelerator.wait_for_everyone,
    )
