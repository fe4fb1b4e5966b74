"""Tiny random Stable Diffusion components ("dummy components", as diffusers' own tests build them).

`build_tiny_sd_pipeline()` returns a real `StableDiffusionPipeline` with SD 2's layout and
scheduler settings (a PNDM config with `steps_offset: 1`, epsilon prediction, scaled-linear betas)
at toy size: a 3-block VAE (latents 4x smaller than pixels), latents 4 x 6 x 6, so images are
24 x 24 like the shapes world's smoke profile. `save_tiny_sd(folder)` writes it with
`save_pretrained`, ready for `StableDiffusionPipeline.from_pretrained(folder)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

LATENT_SIZE = 6  # unet.sample_size: 6 x 6 latents
VAE_SCALE = 4  # 3 VAE blocks -> 2 downsamplings
IMAGE_SIZE = LATENT_SIZE * VAE_SCALE  # 24 px
TEXT_DIM = 32
MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with one token per byte (plus its end-of-word form), no merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
                         model_max_length=MAX_LENGTH)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_DIM, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH, projection_dim=TEXT_DIM,
    ))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4), norm_num_groups=4,
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[4, 8, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=2, sample_size=IMAGE_SIZE,
    )


def build_scheduler() -> PNDMScheduler:
    """SD 2 base's scheduler config (the model converts it to DDIM)."""
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon")


def build_tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return StableDiffusionPipeline(
        vae=build_vae(), text_encoder=build_text_encoder(tokenizer), tokenizer=tokenizer, unet=build_unet(),
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    build_tiny_sd_pipeline(seed).save_pretrained(folder)
    return folder
