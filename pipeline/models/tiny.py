"""The tiny pixel-space text-to-image model of the shapes world (~1 M parameters).

Real diffusers/transformers classes built from small configs: a `UNet2DConditionModel` with
cross-attention only at the lowest resolution and in the mid block (attention at 12x12 or more
doubled the step time, docs/design.md), a 2-layer `CLIPTextModel` over a word-level tokenizer, and a
`DDIMScheduler`. The pooled caption embedding is added to the time embedding
(`class_embed_type="projection"`) and travels as token 0 of the conditioning tensor.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from pipeline.models.base import Text2ImageModel, pixels_to_unit, unit_to_pixels
from pipeline.models.tokenizer import MAX_LENGTH, build_word_tokenizer

MODEL_INDEX = "model_index.json"
PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")  # a saved tiny model's subfolders
KIND = "tiny"
LOAD_TIME_KEYS = ("is_local", "local_files_only", "name_or_path")  # tokenizer options from_pretrained records


def build_unet(resolution: int, channels: tuple[int, ...], text_dim: int, heads: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        cross_attention_dim=text_dim,
        attention_head_dim=heads,  # diffusers' legacy name: this is the number of heads
        norm_num_groups=8,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=text_dim,
    )


def build_scheduler(prediction_type: str, beta_schedule: str) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )


def build_text_encoder(tokenizer: PreTrainedTokenizerBase, text_dim: int, layers: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        projection_dim=text_dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


class TinyText2Image(Text2ImageModel):
    """Pixel-space model: the diffusion space is the image itself in [-1, 1]."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = None
        self.unet.set_attn_processor(AttnProcessor())  # faster than SDPA at these sizes (docs/design.md)

    @classmethod
    def from_config(cls, *, words: list[str], resolution: int = 24, channels=(16, 32, 64), text_dim: int = 64,
                    text_layers: int = 2, heads: int = 4, prediction_type: str = "v_prediction",
                    beta_schedule: str = "squaredcos_cap_v2") -> "TinyText2Image":
        tokenizer = build_word_tokenizer(words)
        return cls(
            build_unet(resolution, tuple(channels), text_dim, heads),
            build_text_encoder(tokenizer, text_dim, text_layers),
            tokenizer,
            build_scheduler(prediction_type, beta_schedule),
        )

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_LENGTH,
                                truncation=True, return_tensors="pt").to(self.device)
        with self.autocast():
            out = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1).float()

    def predict(self, sample, timesteps, embeds):
        timesteps = torch.as_tensor(timesteps, device=sample.device).expand(sample.shape[0])
        with self.autocast():
            out = self.denoiser(sample, timesteps, encoder_hidden_states=embeds, class_labels=embeds[:, 0]).sample
        return out.to(sample.dtype)

    @property
    def sample_shape(self):
        size = self.unet.config.sample_size
        return (3, size, size)

    def to_images(self, x0):
        return unit_to_pixels(x0)

    def from_images(self, images):
        return pixels_to_unit(images).to(self.device)

    def save_pretrained(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.plain_unet().save_pretrained(directory / "unet")  # LoRA, if any, fused
        self.text_encoder.save_pretrained(directory / "text_encoder")
        for key in LOAD_TIME_KEYS:  # how it was loaded, not what it is: the same tokenizer saves the same bytes
            self.tokenizer.init_kwargs.pop(key, None)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / MODEL_INDEX).write_text(json.dumps({"kind": KIND, "resolution": self.sample_shape[1]}, indent=1))

    @classmethod
    def from_pretrained(cls, directory) -> "TinyText2Image":
        directory = Path(directory)
        return cls(
            UNet2DConditionModel.from_pretrained(directory / "unet"),
            CLIPTextModel.from_pretrained(directory / "text_encoder"),
            AutoTokenizer.from_pretrained(directory / "tokenizer"),
            DDIMScheduler.from_pretrained(directory / "scheduler"),
        )
