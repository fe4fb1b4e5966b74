"""Stable Diffusion behind the `Text2ImageModel` contract: diffusion in the VAE's latent space.

The components of a diffusers `StableDiffusionPipeline` (UNet, VAE, CLIP text encoder and
tokenizer), with its scheduler converted to `DDIMScheduler` (same betas, offsets and prediction
type) because the sampler and trainer share one DDIM transition. Classifier-free guidance is the
sampler's (`pipeline.sampling.guided_prediction`); the unconditional embedding is the encoding of "".

Options, read from params when present (see `SDOptions.from_params`):
- `model.gradient_checkpointing`: recompute UNet activations in the backward pass.
- `model.mixed_precision: bf16`: UNet, VAE and text encoder run under bf16 autocast (weights
  and optimiser state stay float32), on CUDA or the CPU. Outputs are cast back to float32.
- `model.resolution`: image size in pixels (default: the UNet's `sample_size` x the VAE's scale).

`save_pretrained` writes the plain diffusers pipeline layout (`model_index.json` with `_class_name`),
so `StableDiffusionPipeline.from_pretrained(folder)` and `load_model(folder)` both read it. With
LoRA the adapters are fused into a copy of the UNet and the full UNet is saved: the folder is an
ordinary SD pipeline any diffusers user can load, at the cost of a full UNet on disk.

`write_base_pointer(folder, source)` writes a base-model folder whose `model_index.json` only names
the hub id or path (`{"kind": "stable_diffusion", "pretrained": ...}`): `load_model(folder)` follows
it, so `data/models/base` can stand for SD 2 without copying its weights.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import ModelLoadError, ParamsError
from pipeline.models.base import Text2ImageModel, pixels_to_unit, unit_to_pixels, without_source_path

MIXED_PRECISION = ("no", "bf16")
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class SDOptions:
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # "no" | "bf16"
    resolution: int | None = None  # pixels; None = the UNet's native size
    device: str | None = None  # where `load` puts the model; None = leave on CPU

    @classmethod
    def from_params(cls, params) -> "SDOptions":
        """Read the options defensively: a params object may lack any of these fields. `rl.lora_rank`
        is not a load option: the RL trainer adds the adapters (`build_trainer`), as for the tiny
        model, so sampling loads no idle adapters and the control trains every weight."""
        if params is None:
            return cls()
        model = getattr(params, "model", None)
        return cls(
            gradient_checkpointing=bool(getattr(model, "gradient_checkpointing", False)),
            mixed_precision=str(getattr(model, "mixed_precision", "no") or "no"),
            resolution=getattr(model, "resolution", None),
            device=getattr(params, "device", None),
        )


def process_device(device: str) -> str:
    """`device`, with a bare "cuda" made this process's GPU under `accelerate launch` (LOCAL_RANK)."""
    rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(rank)}"
    return device


def _hub_error(source: str, error: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load Stable Diffusion {source!r}: it is not a local folder, and it is not in the local Hugging "
        f"Face cache (or cannot be downloaded; HF_HUB_OFFLINE=1 forbids downloads) ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}). To provide it as a local path: on a machine with "
        f"network access run `StableDiffusionPipeline.from_pretrained({source!r}).save_pretrained(<folder>)` (or "
        f"`huggingface-cli download {source} --local-dir <folder>`), copy the folder here and set `model.pretrained` "
        f"to it."
    )


def write_base_pointer(directory: str | Path, source: str) -> None:
    """A base-model folder that names `source` (hub id or path) instead of copying gigabytes of weights.

    The `pretrain` stage writes one for `model.kind: stable_diffusion`, so every stage that reads
    `data/models/base` loads the configured model through `load_model` as it does the tiny one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_INDEX).write_text(json.dumps({"kind": "stable_diffusion", "pretrained": str(source)}, indent=1))


def read_model_index(path: Path) -> dict:
    """A model folder's model_index.json; ModelLoadError naming it when it is not a JSON object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc}); expected a model folder's index: re-run the "
                             "stage that writes the model") from None
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path}: expected a JSON object (a model folder's index), got {type(content).__name__}")
    return content


def resolve_pointer(source: str) -> str:
    """The hub id or path a pointer folder names; `source` itself for anything else."""
    index = Path(source) / MODEL_INDEX
    if index.is_file():
        content = read_model_index(index)
        if "_class_name" not in content and content.get("pretrained"):
            return str(content["pretrained"])
    return source


class StableDiffusionModel(Text2ImageModel):
    """Latent-space model: x is the VAE latent times `scaling_factor`; images come from the VAE decoder."""

    decode_batch = 8  # VAE decode/encode chunk (bounds activation memory at 512 px)

    @property
    def vae(self):
        # The base class's `vae = None` class attribute would shadow the registered submodule
        # (nn.Module looks in `_modules` only when normal lookup fails); read it from `_modules`.
        return self._modules["vae"]

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, options: SDOptions | None = None):
        super().__init__()
        from diffusers import DDIMScheduler

        options = options or SDOptions()
        if options.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"model.mixed_precision is {options.mixed_precision!r}; expected one of {MIXED_PRECISION}")
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        if not isinstance(scheduler, DDIMScheduler):  # same betas/offsets; never clip latents to [-1, 1]
            config = dict(scheduler.config)
            config["clip_sample"] = bool(config.get("clip_sample", False))
            scheduler = DDIMScheduler.from_config(config)
        self.scheduler = scheduler
        self.mixed_precision = options.mixed_precision
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if options.resolution is not None and options.resolution % self.vae_scale_factor:
            raise ParamsError(f"'model.resolution' is {options.resolution}; expected a multiple of the VAE's "
                              f"downscale factor {self.vae_scale_factor}")
        self.resolution = options.resolution or unet.config.sample_size * self.vae_scale_factor
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        if options.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, params=None) -> "StableDiffusionModel":
        """From a hub id (in the local cache, or downloaded when online) or a local pipeline folder,
        with the options in `params` (LoRA, checkpointing, precision, resolution; moved to `params.device`)."""
        return cls.from_pretrained(source, SDOptions.from_params(params))

    @classmethod
    def from_pretrained(cls, source, options: SDOptions | None = None) -> "StableDiffusionModel":
        from diffusers import StableDiffusionPipeline

        source, options = resolve_pointer(str(source)), options or SDOptions()
        try:
            pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
        except Exception as error:  # noqa: BLE001  (hub, file and format errors all mean "cannot load")
            if not Path(source).is_dir():
                raise _hub_error(source, error) from None
            raise ModelLoadError(f"{source}: cannot load the Stable Diffusion pipeline folder "
                                 f"({type(error).__name__}: {error}); expected diffusers' save_pretrained layout "
                                 "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)") from None
        model = cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, options)
        if options.device:
            model.to(process_device(options.device))
        return model.eval()

    # -- the contract -------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden states over `model_max_length` tokens, as StableDiffusionPipeline encodes them."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        with self.autocast():
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.float()

    def predict(self, sample, timesteps, embeds):
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(sample.shape[0])
        with self.autocast():
            out = self.denoiser(sample, timesteps, encoder_hidden_states=embeds).sample
        return out.to(sample.dtype)

    @property
    def sample_shape(self):
        size = self.resolution // self.vae_scale_factor
        return (self.unet.config.in_channels, size, size)

    def _latent_scale(self) -> tuple[float, float]:
        shift = getattr(self.vae.config, "shift_factor", None)
        return float(self.vae.config.scaling_factor), float(shift or 0.0)

    @torch.no_grad()
    def to_images(self, x0):
        scale, shift = self._latent_scale()
        chunks = []
        for part in x0.split(self.decode_batch):
            with self.autocast():
                decoded = self.vae.decode(part.to(self.device) / scale + shift).sample
            chunks.append(unit_to_pixels(decoded.float()).cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def from_images(self, images):
        """uint8 images -> latents: the posterior mean (deterministic) times `scaling_factor`.

        Images of another size are resized (bilinear, antialiased) to `resolution` first.
        """
        scale, shift = self._latent_scale()
        chunks = []
        for part in images.split(self.decode_batch):
            pixels = pixels_to_unit(part).to(self.device)
            if pixels.shape[-1] != self.resolution or pixels.shape[-2] != self.resolution:
                pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bilinear",
                                       antialias=True, align_corners=False)
            with self.autocast():
                latents = self.vae.encode(pixels).latent_dist.mean
            chunks.append((latents.float() - shift) * scale)
        return torch.cat(chunks)

    def save_pretrained(self, directory):
        """diffusers' StableDiffusionPipeline layout (DDIM scheduler, no safety checker); LoRA fused."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=without_source_path(self.vae), text_encoder=self.text_encoder,
                                       tokenizer=self.tokenizer,
                                       unet=self.plain_unet(), scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(Path(directory))
