"""Reading and validating a params file (params.yaml; the schema is pipeline/params.py).

Validated once, before any work: unknown keys, wrong types, out-of-range values and
inconsistent combinations fail with the file, the dotted key path, what was expected, and a
"did you mean" for typos.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.corpora import CORPORA
from pipeline.errors import ParamsError, UnknownRewardOptionError
from pipeline.params import Params


def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of ``loc`` (for "did you mean")."""
    model: Any = Params
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or ()
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        holder = _model_at(loc)
        known = sorted(holder.model_fields) if holder else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{_dotted(loc[:-1] + (close[0],))}'?" if close else ""
        return f"unknown key '{key}'{hint} (known here: {', '.join(known)})"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    value = error.get("input")
    return f"'{key}': {error['msg']} (got {value!r})"


def parse_params(raw: Any, source: str = "<params>") -> Params:
    """Validate a loaded YAML mapping; raise ParamsError naming the file and keys."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    _reject_nan(raw, source, ())
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: " + "; ".join(lines)) from None
    check_consistency(params, source)
    return params


def _reject_nan(node: Any, source: str, loc: tuple[Any, ...]) -> None:
    if isinstance(node, float) and not math.isfinite(node):
        raise ParamsError(f"{source}: '{_dotted(loc)}' is {node}; expected a finite number")
    if isinstance(node, dict):
        for key, value in node.items():
            _reject_nan(value, source, loc + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _reject_nan(value, source, loc + (index,))


def check_consistency(params: Params, source: str) -> None:
    """Cross-key checks that pydantic field constraints cannot express."""
    from pipeline.rewards.registry import check_reward_options, known_rewards

    known = known_rewards()
    for index, task in enumerate(params.rl.tasks):
        if task.reward not in known:
            raise ParamsError(
                f"{source}: 'rl.tasks[{index}].reward' is {task.reward!r}; known rewards: {', '.join(known)}"
            )
        try:
            check_reward_options(task.reward, task.reward_options)
        except UnknownRewardOptionError as exc:
            raise ParamsError(f"{source}: 'rl.tasks[{index}].reward_options': {exc}") from None
        if task.prompts not in CORPORA:
            raise ParamsError(
                f"{source}: 'rl.tasks[{index}].prompts' is {task.prompts!r}; known corpora: {', '.join(CORPORA)}"
            )
        if task.advantage == "group" and task.samples_per_prompt < 2:
            raise ParamsError(
                f"{source}: 'rl.tasks[{index}].samples_per_prompt' is {task.samples_per_prompt}; "
                "group advantages need at least 2 samples per prompt"
            )
        batch = task.prompts_per_iteration * task.samples_per_prompt
        if batch % params.rl.optimizer_steps:  # RLTrainer.make_plan chunks the batch into optimizer_steps minibatches
            raise ParamsError(
                f"{source}: 'rl.tasks[{index}]' draws {task.prompts_per_iteration} prompts_per_iteration x "
                f"{task.samples_per_prompt} samples_per_prompt = {batch} samples per iteration; expected a number "
                f"divisible by 'rl.optimizer_steps' ({params.rl.optimizer_steps}): one equal minibatch per "
                "gradient step"
            )
    if params.rl.share_group_noise and params.rl.eta == 0:
        raise ParamsError(f"{source}: 'rl.share_group_noise' is true but 'rl.eta' is 0: deterministic rollouts from "
                          "one shared start are identical, so every group advantage would be 0; set "
                          "rl.share_group_noise: false")
    if params.model.kind == "stable_diffusion" and params.rl.pretrain_beta > 0:
        raise ParamsError(f"{source}: 'rl.pretrain_beta' is {params.rl.pretrain_beta} but L_pre needs an image-caption "
                          "stream, and only the tiny model has one (the shapes world); with model.kind "
                          "'stable_diffusion' set rl.pretrain_beta: 0")
    if params.model.kind == "tiny" and params.world.resolution % 4:
        raise ParamsError(f"{source}: 'world.resolution' must be a multiple of 4 for the tiny model")


def load_params(path: str | Path) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
