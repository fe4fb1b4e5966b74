"""Build a new model from params or load a saved one, with errors that name the path."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from pipeline.errors import ModelLoadError
from pipeline.models.base import Text2ImageModel
from pipeline.models.tiny import MODEL_INDEX, PARTS, TinyText2Image
from pipeline.params import Params


def new_tiny_model(params: Params) -> TinyText2Image:
    from pipeline.world.vocab import vocabulary

    m = params.model
    return _placed(TinyText2Image.from_config(
        words=vocabulary(), resolution=params.world.resolution, channels=m.channels, text_dim=m.text_dim,
        text_layers=m.text_layers, heads=m.attention_heads, prediction_type=m.prediction_type,
        beta_schedule=m.beta_schedule,
    ), params)


def _placed(model: TinyText2Image, params: Params) -> TinyText2Image:
    """The tiny model on `params.device` with `model.mixed_precision` and `model.gradient_checkpointing`
    (SD's loader does the same)."""
    from pipeline.runtime import resolve_device

    model.mixed_precision = params.model.mixed_precision
    if params.model.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    return model.to(resolve_device(params.device))


@contextlib.contextmanager
def _quiet_libraries(level: int, progress_bars: bool) -> Iterator[None]:
    """diffusers/transformers log lines below `level` (weight-file fallbacks, "Couldn't connect to the
    Hub") and, unless `progress_bars`, transformers' "Loading weights" bar stay off stderr: a failed
    load is reported as one line (ModelLoadError) instead."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    saved = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity(),
             transformers_logging.is_progress_bar_enabled())
    diffusers_logging.set_verbosity(max(level, saved[0]))
    transformers_logging.set_verbosity(max(level, saved[1]))
    if not progress_bars:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(saved[0])
        transformers_logging.set_verbosity(saved[1])
        if saved[2]:
            transformers_logging.enable_progress_bar()


def load_model(source: str | Path, params: Params | None = None) -> Text2ImageModel:
    """Load a saved model folder (tiny or Stable Diffusion layout) or, for SD, a hub id."""
    path = Path(source)
    kind = params.model.kind if params else None
    if path.is_dir() and (path / MODEL_INDEX).is_file():
        from pipeline.models.stable_diffusion import read_model_index

        index = read_model_index(path / MODEL_INDEX)
        kind = index.get("kind", "stable_diffusion" if "_class_name" in index else kind)
    if kind == "stable_diffusion":
        from pipeline.models.stable_diffusion import StableDiffusionModel

        with _quiet_libraries(logging.ERROR, progress_bars=True):  # user folders: keep errors
            return StableDiffusionModel.load(str(source), params)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model folder not found (run the stage that writes it, e.g. `dvc repro`)")
    missing = [part for part in PARTS if not (path / part).is_dir()]
    if missing:
        raise ModelLoadError(f"{path / missing[0]}: folder not found; expected a tiny model folder with "
                             f"{', '.join(p + '/' for p in PARTS)}: re-run the stage that writes it")
    try:
        with _quiet_libraries(logging.CRITICAL, progress_bars=False):  # our own layout
            model = TinyText2Image.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot load the model ({type(exc).__name__}: {exc}); "
                             "the weights are missing or truncated: re-run the stage that writes it") from None
    if params is None:
        return model.eval()
    if model.sample_shape[1] != params.world.resolution:
        raise ModelLoadError(f"{path}: the model was trained at {model.sample_shape[1]} px but "
                             f"'world.resolution' is {params.world.resolution}")
    check_matches_params(model, path, params)
    return _placed(model, params).eval()


def check_matches_params(model: TinyText2Image, path: Path, params: Params) -> None:
    """A saved tiny model whose shape or noise schedule contradicts params.model was made with other
    params: sampling or training it under these would silently differ from what they say."""
    m, unet = params.model, model.unet.config
    found = {"prediction_type": model.scheduler.config.prediction_type,
             "beta_schedule": model.scheduler.config.beta_schedule,
             "channels": tuple(unet.block_out_channels), "text_dim": unet.cross_attention_dim,
             "text_layers": model.text_encoder.config.num_hidden_layers, "attention_heads": unet.attention_head_dim}
    for key, value in found.items():
        if value != getattr(m, key):
            raise ModelLoadError(f"{path}: the model has {key} {value!r} but 'model.{key}' is {getattr(m, key)!r}; "
                                 "expected the params it was made with (re-run the stage that writes it)")
