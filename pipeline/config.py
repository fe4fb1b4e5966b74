"""Reading and validating a params file (params.yaml; the schema is pipeline/params.py).

Validated once, before any work: unknown keys, wrong types, out-of-range values and
inconsistent combinations fail with the file, the dotted key path, what was expected, and a
"did you mean" for typos.
"""
from __future__ import annotations

import difflib
import math
import re
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
    if error["type"] == "value_error":  # the project's own validators: their message says what was got
        message = error["msg"].removeprefix("Value error, ")
        return f"'{key}': {message}" if "got" in message else f"'{key}': {message} (got {value!r})"
    return f"'{key}': {error['msg']} (got {value!r})"


def parse_params(raw: Any, source: str = "<params>") -> Params:
    """Validate a loaded YAML mapping; raise ParamsError naming the file and keys."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    _reject_nan(raw, source, ())
    threads = raw.get("threads", 1)
    if threads != "auto" and (type(threads) is not int or not 1 <= threads <= 64):  # one message, not one per union member
        raise ParamsError(f"{source}: 'threads' is {threads!r}; expected a whole number from 1 to 64 or 'auto' (the "
                          "cores available)")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: " + "; ".join(lines)) from None
    check_consistency(params, source)
    return resolve_auto(params)


def resolve_auto(params: Params) -> Params:
    """`threads: auto` and `model.mixed_precision: auto` resolved for this machine, once, so that
    torch, checkpoint run keys and tracked params all see the same numbers (pipeline/machine.py)."""
    from pipeline.machine import auto_mixed_precision, auto_threads

    update: dict[str, Any] = {}
    if params.threads == "auto":
        update["threads"] = auto_threads()
    if params.model.mixed_precision == "auto":
        update["model"] = params.model.model_copy(update={"mixed_precision": auto_mixed_precision(params.device)})
    return params.model_copy(update=update) if update else params


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
    check_ranges(params, source)


# Keys each model kind ignores: set in a params file, they would silently do nothing.
IGNORED_BY_KIND = {"stable_diffusion": ("channels", "text_dim", "text_layers", "attention_heads", "prediction_type",
                                        "beta_schedule"),
                   "tiny": ("pretrained", "resolution")}


def check_ranges(params: Params, source: str) -> None:
    """Values each key accepts alone but that, beside other keys, would be clamped, ignored or unusable."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", params.device):
        raise ParamsError(f"{source}: 'device' is {params.device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    seeds = params.sampling.seeds
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"{source}: 'sampling.seeds' is {seeds}; expected distinct seeds (a repeated one samples "
                          "the same images twice)")
    check_eta = params.sampling.check_eta
    if check_eta is not None and check_eta == params.sampling.eta:
        default = "" if "check_eta" in params.sampling.model_fields_set else " (the default)"
        raise ParamsError(f"{source}: 'sampling.check_eta' is {check_eta}{default}, the same as 'sampling.eta': the "
                          "sampler check would repeat the evaluation's sampler; expected another eta in [0, 1] (e.g. "
                          "1.0 beside eta 0) or null to turn the check off")
    m = params.model
    ignored = [key for key in IGNORED_BY_KIND[m.kind] if key in m.model_fields_set]
    if ignored:
        raise ParamsError(f"{source}: 'model.{ignored[0]}' is set but model.kind {m.kind!r} ignores it; remove it "
                          "(or change model.kind)")
    if m.kind == "tiny" and m.channels[-1] % m.attention_heads:  # the tiny UNet attends at its lowest level only
        raise ParamsError(f"{source}: 'model.attention_heads' is {m.attention_heads}; expected a divisor of the last "
                          f"of model.channels ({m.channels[-1]}), which the tiny UNet's attention splits into heads")
    if m.kind == "tiny" and m.text_dim % 2:
        raise ParamsError(f"{source}: 'model.text_dim' is {m.text_dim}; expected an even number (the tiny text "
                          "encoder has 2 attention heads)")
    largest = corpus_capacity()
    for key in ("train_per_task", "eval_per_task"):
        if getattr(params.prompts, key) > largest:
            raise ParamsError(f"{source}: 'prompts.{key}' is {getattr(params.prompts, key)} but the largest corpus "
                              f"(composition) has {largest} prompts; expected at most {largest}")
    rl = params.rl
    steps = rl.rollout_steps or params.sampling.steps
    window = max(1, math.ceil(rl.timestep_window * steps))  # pipeline/rl/policy.py choose_train_steps
    if rl.algorithm == "ppo" and rl.train_timesteps > window:
        raise ParamsError(f"{source}: 'rl.train_timesteps' is {rl.train_timesteps} but the trained window holds "
                          f"{window} of the {steps} rollout steps (rl.timestep_window {rl.timestep_window}); expected "
                          f"at most {window}")


def corpus_capacity() -> int:
    """Prompts in the largest corpus, composition: every ordered pair of coloured shapes in every
    relation (pipeline/prompts.py enumerate_specs; tests/test_config.py checks the two agree)."""
    from pipeline.world.vocab import COLOURS, RELATIONS, SHAPES

    objects = len(COLOURS) * len(SHAPES)
    return objects * (objects - 1) * len(RELATIONS)


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; a params file with one is almost surely a slip."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen and key != "<<":
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: duplicated key {key!r}; YAML keeps only the "
                                    "last value: expected each key once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML params file") from None
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
