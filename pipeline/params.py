"""The schema of params.yaml: one pydantic model per section, with its defaults and ranges.

Unknown keys, wrong types and out-of-range values are rejected here; reading a file, the error
messages and the checks across keys are pipeline/config.py.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _numeric(annotation: Any) -> bool:
    """int or float, or an optional, list or tuple of them."""
    if annotation in (int, float):
        return True
    args = [a for a in get_args(annotation) if a not in (type(None), Ellipsis)]
    return bool(args) and all(_numeric(a) for a in args)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info) -> Any:
        """YAML's true/false where a number is expected is a slip, not 1/0, and 1 or "yes" where true/false
        is expected is not a boolean (pydantic would convert both)."""
        annotation = cls.model_fields[info.field_name].annotation
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items) and _numeric(annotation):
            raise ValueError(f"expected a number, got a boolean ({value!r})")
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value


class StreamParams(_Section):
    """How web-like the pretraining stream is (`pipeline.world.realism`); all zero is the clean world."""

    defect_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of images with one defect
    defect_kinds: dict[str, float] = Field(  # relative weights of the defect kinds
        default_factory=lambda: {"blur": 1.0, "stray": 1.0, "faded": 1.0, "cropped": 1.0, "tiny": 1.0})
    wrong_relation: float = Field(0.0, ge=0.0, le=1.0)  # captions whose spatial relation is wrong
    wrong_colour: float = Field(0.0, ge=0.0, le=1.0)  # captions with one wrong colour word
    dropped_attribute: float = Field(0.0, ge=0.0, le=1.0)  # captions missing one named attribute
    bias_colour: str | None = None  # the colour an unnamed colour mostly is ...
    bias_share: float = Field(0.25, ge=0.0, le=1.0)  # ... and how often

    @field_validator("defect_kinds")
    @classmethod
    def _known_kinds(cls, kinds: dict[str, float]) -> dict[str, float]:
        from pipeline.world.vocab import DEFECT_KINDS

        unknown = sorted(set(kinds) - set(DEFECT_KINDS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], DEFECT_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown defect kind {unknown[0]!r}{hint}; known: {', '.join(DEFECT_KINDS)}")
        if any(w < 0 for w in kinds.values()) or sum(kinds.values()) <= 0:
            raise ValueError(f"defect kind weights must be >= 0 with a positive sum, got {kinds}")
        return kinds

    @field_validator("bias_colour")
    @classmethod
    def _known_colour(cls, colour: str | None) -> str | None:
        from pipeline.world.vocab import COLOURS

        if colour is not None and colour not in COLOURS:
            raise ValueError(f"expected one of {', '.join(COLOURS)} or null, got {colour!r}")
        return colour


class WorldParams(_Section):
    resolution: int = Field(24, ge=16, le=64)
    two_object_prob: float = Field(0.5, ge=0.0, le=1.0)
    stream: StreamParams = StreamParams()


class PromptsParams(_Section):
    train_per_task: int = Field(256, ge=1)
    eval_per_task: int = Field(48, ge=1)
    heldout_combos: list[tuple[str, str]] = Field(
        default_factory=lambda: [("red", "triangle"), ("blue", "circle"), ("yellow", "square")]
    )
    # finetune re-checks that no eval prompt is among the train prompts of corpora the prompts stage
    # split disjointly (see data/prompts/manifest.json). Corpora too small to split (diversity, single)
    # are trained and evaluated on the same seen prompts by design; their unseen pairs stay held out.
    require_disjoint: bool = True

    @field_validator("heldout_combos")
    @classmethod
    def _known_combos(cls, combos: list[tuple[str, str]]) -> list[tuple[str, str]]:
        from pipeline.world.vocab import COLOURS, SHAPES

        for colour, shape in combos:
            if colour not in COLOURS or shape not in SHAPES:
                raise ValueError(
                    f"({colour!r}, {shape!r}) is not a colour-shape pair; "
                    f"colours: {sorted(COLOURS)}, shapes: {list(SHAPES)}"
                )
        return combos


class ModelParams(_Section):
    kind: Literal["tiny", "stable_diffusion"] = "tiny"
    pretrained: str | None = None  # hub id or local path (stable_diffusion)
    channels: tuple[int, ...] = (16, 32, 64)
    text_dim: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    attention_heads: int = Field(4, ge=1)  # the tiny UNet's attention heads (its text encoder keeps 2)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    resolution: int | None = Field(None, ge=8)  # Stable Diffusion image size in px; None = the UNet's own
    mixed_precision: Literal["no", "bf16", "auto"] = "no"  # bf16 autocast (CUDA, AVX-512 BF16); auto: machine.py
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _sd_needs_source(self) -> "ModelParams":
        if self.kind == "stable_diffusion" and not self.pretrained:
            raise ValueError("model.kind 'stable_diffusion' needs model.pretrained (a hub id or local path)")
        if len(self.channels) != 3 or any(c <= 0 or c % 8 for c in self.channels):
            raise ValueError(f"model.channels must be 3 positive multiples of 8, e.g. [16, 32, 64]; "
                             f"got {list(self.channels)}")
        return self


class PretrainParams(_Section):
    steps: int = Field(2400, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)


class SamplingParams(_Section):
    steps: int = Field(20, ge=2, le=1000)
    guidance: float = Field(3.0, ge=1.0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    check_eta: float | None = Field(1.0, ge=0.0, le=1.0)  # the sampler check's eta (preference prompts); null: off
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    diversity_seeds: int = Field(16, ge=2)  # samples per under-specified eval prompt
    batch_size: int = Field(64, ge=1)  # samples per sampler call: eval, reward-model pairs, RL trajectories


class TaskParams(_Section):
    name: str
    reward: str
    prompts: str  # prompt corpus (task name in data/prompts)
    samples_per_prompt: int = Field(8, ge=1)
    prompts_per_iteration: int = Field(8, ge=1)
    advantage: Literal["group", "batch"] = "group"
    # Scales the size of this task's optimiser steps (the learning rate of its steps), so the task counts
    # `weight` times in the joint update. Scaling its advantages instead would do almost nothing: each
    # task takes its own AdamW steps, and Adam divides out a constant gradient scale.
    weight: float = Field(1.0, gt=0.0)
    reward_options: dict[str, Any] = Field(default_factory=dict)  # e.g. model, processor, classes
    # Train prompts containing any of these words are left out of the task, e.g. [small] for a reward
    # that grows objects (docs/experiments.md E19). Evaluation still scores the whole corpus.
    exclude_words: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        from pipeline.corpora import NAME_PATTERN, NAME_RULE

        if not re.fullmatch(NAME_PATTERN, name):
            raise ValueError(f"expected {NAME_RULE} (the name keys metrics, CSV rows and report sections), got {name!r}")
        return name

    @field_validator("exclude_words")
    @classmethod
    def _single_words(cls, words: list[str]) -> list[str]:
        from pipeline.world.vocab import vocabulary

        for word in words:
            if not word.strip() or len(word.split()) != 1:
                raise ValueError(f"each exclude word must be one non-empty word, got {word!r}")
            if word.strip().lower() not in vocabulary():
                close = difflib.get_close_matches(word.strip().lower(), vocabulary(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{word!r} is in no prompt{hint}; expected words of: {', '.join(vocabulary())}")
        return [word.strip().lower() for word in words]


class RLParams(_Section):
    # "ppo": the paper's clipped policy gradient over the denoising MDP; "nft": the diffusion loss on
    # the policy's own samples split by advantage (pipeline/rl/nft.py, docs/method.md "Estimators").
    algorithm: Literal["ppo", "nft"] = "ppo"
    nft_beta: float = Field(1.0, gt=0.0)  # nft: how far the implicit policies move per unit of loss
    nft_adv_scale: float = Field(2.0, gt=0.0)  # nft: |advantage| at which r reaches 0 or 1
    nft_t_min: float = Field(0.0, ge=0.0, lt=1.0)  # nft: train timesteps from t_min * T up
    # nft: the guidance of the prediction trained (None: the rollouts'; 1: the conditional branch alone)
    nft_guidance: float | None = Field(None, ge=1.0)
    # nft: weight of ||v_theta - v_ref||^2, the pull back to the model RL started from (0: none). NFT's own
    # anchor is the policy of the current iteration, so without this its steps add up as drift.
    nft_ref_weight: float = Field(0.0, ge=0.0)
    rollout_steps: int | None = Field(None, ge=2, le=1000)  # RL rollouts' DDIM steps; None = sampling.steps
    rollout_guidance: float | None = Field(None, ge=1.0)  # RL rollouts' guidance; None = sampling.guidance
    iterations: int = Field(100, ge=1)
    tasks: list[TaskParams] = Field(min_length=1)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    warmup_iterations: int = Field(10, ge=0)
    weight_decay: float = Field(1e-2, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    clip_range: float = Field(1e-2, gt=0.0)
    adv_clip: float = Field(10.0, gt=0.0)
    inner_epochs: int = Field(1, ge=1)
    optimizer_steps: int = Field(2, ge=1)  # gradient steps per task per iteration
    train_timesteps: int = Field(6, ge=1)  # timesteps trained per trajectory per inner epoch
    timestep_window: float = Field(0.6, gt=0.0, le=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    eta: float = Field(1.0, ge=0.0, le=1.0)  # rollouts' DDIM eta; ppo needs > 0 (a log-prob per step)
    clamp_x0: bool = False
    share_group_noise: bool = True
    pretrain_beta: float = Field(0.02, ge=0.0)
    pretrain_mode: Literal["separate", "joint"] = "separate"
    pretrain_batch_size: int = Field(64, ge=1)
    lora_rank: int = Field(0, ge=0)  # 0 = full fine-tune
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # 0 = no EMA
    checkpoint_every: int = Field(5, ge=1)
    max_minutes: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _ppo_needs_noise(self) -> "RLParams":
        if self.algorithm == "ppo" and self.eta == 0:
            raise ValueError("rl.eta is 0 but rl.algorithm 'ppo' needs stochastic steps (eta > 0) to have "
                             "log-probabilities; use eta > 0 or algorithm 'nft'")
        return self

    @model_validator(mode="after")
    def _unique_tasks(self) -> "RLParams":
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"rl.tasks names must be unique, got {names}")
        return self


class RewardModelParams(_Section):
    pairs: int = Field(2000, ge=10)
    # Where the pairs come from (preference_data.py): base samples of one prompt ("group"), stream renders
    # of one prompt with the stream's defects ("stream"), a render against another prompt's ("mismatch").
    sources: dict[str, float] = Field(default_factory=lambda: {"group": 1.0})
    group_size: int = Field(2, ge=2)  # base samples per prompt; every pair within a group is used
    votes: int = Field(1, ge=1)  # raters' votes per training pair (the model fits their share)
    channels: tuple[int, int, int] = (16, 32, 64)  # the preference model's conv widths
    raters: int = Field(5, ge=1)
    rater_noise: float = Field(1.0, gt=0.0)
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: dict[str, float]) -> dict[str, float]:
        known = ("group", "stream", "mismatch")
        unknown = sorted(set(sources) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown pair source {unknown[0]!r}{hint}; known: {', '.join(known)}")
        if any(v < 0 for v in sources.values()) or sum(sources.values()) <= 0:
            raise ValueError(f"source shares must be >= 0 with a positive sum, got {sources}")
        return sources


class ControlParams(_Section):
    budget: Literal["wall_time", "unet_passes"] = "unet_passes"
    lr: float = Field(1e-4, gt=0.0)


class EvaluateParams(_Section):
    bootstrap: int = Field(1000, ge=10, le=100_000)  # resamples: memory grows with resamples x prompts
    diversity_attribute: Literal["colour", "shape", "size"] = "colour"


class Params(_Section):
    seed: int = Field(0, ge=0, lt=2**31)  # numpy seeds the legacy global RNG with it (< 2**32, offsets added)
    threads: int | Literal["auto"] = 1  # torch threads, 1 to 64 (checked in config.py) or "auto" (machine.py)
    device: str = "cpu"
    checkpoint_keep: int = Field(2, ge=1, le=1000)  # newest checkpoints each run keeps (pipeline/checkpoints.py)
    world: WorldParams = WorldParams()
    prompts: PromptsParams = PromptsParams()
    model: ModelParams = ModelParams()
    pretrain: PretrainParams = PretrainParams()
    sampling: SamplingParams = SamplingParams()
    rl: RLParams
    reward_model: RewardModelParams = RewardModelParams()
    control: ControlParams = ControlParams()
    evaluate: EvaluateParams = EvaluateParams()

