"""Scenes (what an image shows), prompt specs (what a caption claims) and their samplers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .vocab import ATTRIBUTES, COLOURS, CONJUNCTION, RELATION_AXIS, RELATIONS, SHAPES, SIZE_FRACTION, SIZES

EDGE = 0.02  # least distance from an object's box to the image border (fraction of the side)
GAP = 0.08  # least gap between two objects' boxes along the axis that separates them
OFF_AXIS_RATIO = 0.5  # spatial relations: |off-axis offset| <= ratio * |on-axis offset|
SPEC_KINDS = ("single", "composition", "underspecified")
_ALLOWED = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}


def _check_attributes(obj: Any, optional: bool) -> None:
    for name in ATTRIBUTES:
        value = getattr(obj, name)
        if not (value in _ALLOWED[name] or (optional and value is None)):
            raise ValueError(f"{name} must be one of {_ALLOWED[name]}, got {value!r}")


def _check_relation(objects: tuple, relation: str | None) -> None:
    if len(objects) == 1 and relation is not None:
        raise ValueError(f"a single object has no relation, got {relation!r}")
    if len(objects) == 2 and relation not in RELATIONS + (CONJUNCTION,):
        raise ValueError(f"relation must be one of {RELATIONS + (CONJUNCTION,)}, got {relation!r}")
    if len(objects) not in (1, 2):
        raise ValueError(f"a scene has 1 or 2 objects, got {len(objects)}")


class _Flat:
    """to_dict/from_dict for a dataclass of plain values."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


class _Group:
    """to_dict/from_dict for a dataclass of `objects` (of type `item`) and a `relation`."""

    item: ClassVar[type]

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "relation": self.relation}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(tuple(cls.item.from_dict(o) for o in d["objects"]), d.get("relation"))


@dataclass(frozen=True)
class ShapeObject(_Flat):
    """One shape; (cx, cy) is its box centre as a fraction of the image side, y downwards."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    def __post_init__(self):
        _check_attributes(self, optional=False)
        for name in ("cx", "cy"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)

    @property
    def side(self) -> float:
        """Side of the object's box as a fraction of the image side."""
        return SIZE_FRACTION[self.size]


@dataclass(frozen=True)
class Scene(_Group):
    """1 or 2 objects; `relation` describes objects[0] relative to objects[1] (None for one)."""

    item: ClassVar[type] = ShapeObject
    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        _check_relation(self.objects, self.relation)


@dataclass(frozen=True)
class ObjectSpec(_Flat):
    """What a prompt claims about one object; None = unspecified."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None

    def __post_init__(self):
        _check_attributes(self, optional=True)

    def matches(self, obj: Any) -> bool:
        """Whether `obj` (anything with colour/shape/size) has every specified attribute."""
        return all(getattr(self, a) in (None, getattr(obj, a)) for a in ATTRIBUTES)


@dataclass(frozen=True)
class PromptSpec(_Group):
    """What a prompt claims: 1 or 2 object specs and the relation of objects[0] to objects[1]."""

    item: ClassVar[type] = ObjectSpec
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        _check_relation(self.objects, self.relation)

    @classmethod
    def from_scene(cls, scene: Scene, drop: set[str] | frozenset[str] = frozenset()) -> PromptSpec:
        """The spec of a scene, with the attributes in `drop` left unspecified."""
        unknown = set(drop) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"can only drop attributes {ATTRIBUTES}, got {sorted(unknown)}")
        objects = tuple(
            ObjectSpec(**{a: None if a in drop else getattr(o, a) for a in ATTRIBUTES}) for o in scene.objects
        )
        return cls(objects, scene.relation)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _attributes(rng: np.random.Generator, spec: ObjectSpec | None) -> dict[str, str]:
    return {a: getattr(spec, a, None) or _pick(rng, _ALLOWED[a]) for a in ATTRIBUTES}


def _place(rng: np.random.Generator, sides: list[float], relation: str | None) -> list[tuple[float, float]]:
    """Box centres for objects of the given sides, inside the image and satisfying `relation`."""
    if len(sides) == 1:
        lo, hi = EDGE + sides[0] / 2, 1 - EDGE - sides[0] / 2
        return [(rng.uniform(lo, hi), rng.uniform(lo, hi))]
    spatial = relation in RELATION_AXIS
    axis, sign = RELATION_AXIS[relation if spatial else _pick(rng, RELATIONS)]
    first, second = sides if sign < 0 else sides[::-1]  # `first` has the smaller coordinate on axis
    half_sum = (first + second) / 2
    d = rng.uniform(half_sum + GAP, 1 - 2 * EDGE - half_sum)
    p_first = rng.uniform(EDGE + first / 2, 1 - EDGE - second / 2 - d)
    p = (p_first, p_first + d) if sign < 0 else (p_first + d, p_first)
    q0 = rng.uniform(EDGE + sides[0] / 2, 1 - EDGE - sides[0] / 2)
    limit = OFF_AXIS_RATIO * d if spatial else 1.0
    q1 = rng.uniform(max(EDGE + sides[1] / 2, q0 - limit), min(1 - EDGE - sides[1] / 2, q0 + limit))
    pairs = [(p[0], q0), (p[1], q1)]
    return pairs if axis == 0 else [(q, p) for p, q in pairs]


def sample_scene(
    rng: np.random.Generator, spec: PromptSpec | None = None, two_object_prob: float = 0.5
) -> Scene:
    """A random scene; with `spec`, one that satisfies it (unspecified attributes random)."""
    if spec is None:
        n = 2 if rng.random() < two_object_prob else 1
        specs, relation = (None,) * n, (_pick(rng, RELATIONS + (CONJUNCTION,)) if n == 2 else None)
    else:
        specs, relation = spec.objects, spec.relation
    attributes = [_attributes(rng, s) for s in specs]
    centres = _place(rng, [SIZE_FRACTION[a["size"]] for a in attributes], relation)
    objects = tuple(ShapeObject(cx=cx, cy=cy, **a) for a, (cx, cy) in zip(attributes, centres))
    return Scene(objects, relation)


def sample_spec(rng: np.random.Generator, kind: str) -> PromptSpec:
    """A random prompt spec of `kind`.

    "single": one object with colour and shape, size specified with probability 0.5;
    "composition": two distinct objects with colour and shape, a spatial relation, no sizes;
    "underspecified": one object with only its shape ("a circle") or only its colour ("a red shape").
    """
    if kind == "single":
        size = _pick(rng, SIZES) if rng.random() < 0.5 else None
        return PromptSpec((ObjectSpec(_pick(rng, tuple(COLOURS)), _pick(rng, SHAPES), size),))
    if kind == "composition":
        first = ObjectSpec(_pick(rng, tuple(COLOURS)), _pick(rng, SHAPES))
        second = first
        while second == first:  # two distinct objects, so the relation is meaningful
            second = ObjectSpec(_pick(rng, tuple(COLOURS)), _pick(rng, SHAPES))
        return PromptSpec((first, second), _pick(rng, RELATIONS))
    if kind == "underspecified":
        if rng.random() < 0.5:
            return PromptSpec((ObjectSpec(shape=_pick(rng, SHAPES)),))
        return PromptSpec((ObjectSpec(colour=_pick(rng, tuple(COLOURS))),))
    raise ValueError(f"kind must be one of {SPEC_KINDS}, got {kind!r}")
