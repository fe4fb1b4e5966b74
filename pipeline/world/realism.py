"""A web-like pretraining stream: image defects, caption noise and attribute bias.

The paper fine-tunes a model pretrained on web images of mixed quality with noisy captions; its
rewards carry what that data does not. A stream of clean renders with exact captions is already
the judge's ideal, and then plain pretraining is the best route (docs/method.md, "The world").
`Realism` makes the gap a parameter of the experiment. It touches the pretraining stream only:
the rater panel, the detector and evaluation never see it.

Per stream item, with its own random generator (so the scenes and captions of the clean stream
are unchanged, bit for bit, whatever the rates):

- bias: when a caption leaves an object's colour unnamed ("a circle"), the colour is
  `bias_colour` with probability `bias_share` (the others share the rest evenly);
- caption noise: a spatial relation replaced by another (`wrong_relation`), a named colour
  replaced by another (`wrong_colour`), a named attribute dropped (`dropped_attribute`);
- image defects, at most one per image, with probability `defect_rate`, of a kind drawn by
  `defect_kinds` weights: `blur` (gaussian, sigma 0.7-1.0 px), `stray` (10-20 stray pixels or a
  faint blob on the background), `faded` (colours 40-60% of the way to grey), `cropped` (the scene
  shifted so an object crosses the border), `tiny` (one object drawn at 10-16% of the image side).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .captions import caption_for_spec, parse_caption
from .render import render_float, to_uint8
from .scene import ObjectSpec, PromptSpec, Scene, ShapeObject
from .vocab import BACKGROUND, COLOURS, DEFECT_KINDS, RELATIONS

BLUR_SIGMA = (0.7, 1.0)  # px
STRAY_PIXELS = (10, 20)
BLOB_RADIUS = (1.5, 2.5)  # px
BLOB_ALPHA = (0.25, 0.4)  # a faint blob: inked, but too pale for the detector to call it an object
FADE = (0.4, 0.6)  # share of the way from the palette colour to grey
GREY = (128.0, 128.0, 128.0)
CROP = (0.3, 0.5)  # share of the object's side pushed past the border
TINY_SIDE = (0.10, 0.16)  # fraction of the image side


@dataclass(frozen=True)
class Realism:
    """How web-like the pretraining stream is; all zero (the default) is the clean world."""

    defect_rate: float = 0.0
    defect_kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in DEFECT_KINDS})
    wrong_relation: float = 0.0
    wrong_colour: float = 0.0
    dropped_attribute: float = 0.0
    bias_colour: str | None = None
    bias_share: float = 0.25

    def __post_init__(self):
        for name in ("defect_rate", "wrong_relation", "wrong_colour", "dropped_attribute", "bias_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        unknown = sorted(set(self.defect_kinds) - set(DEFECT_KINDS))
        if unknown:
            raise ValueError(f"unknown defect kind(s) {unknown}; known: {', '.join(DEFECT_KINDS)}")
        weights = list(self.defect_kinds.values())
        if any(w < 0 for w in weights) or (self.defect_rate > 0 and sum(weights) <= 0):
            raise ValueError(f"defect_kinds weights must be >= 0 with a positive sum, got {self.defect_kinds}")
        if self.bias_colour is not None and self.bias_colour not in COLOURS:
            raise ValueError(f"bias_colour must be one of {tuple(COLOURS)} or None, got {self.bias_colour!r}")

    @classmethod
    def from_params(cls, stream) -> "Realism":
        """From a StreamParams (params.yaml `world.stream`)."""
        return cls(**stream.model_dump())

    @property
    def is_clean(self) -> bool:
        return not (self.defect_rate or self.wrong_relation or self.wrong_colour or self.dropped_attribute
                    or self.bias_colour)


@dataclass(frozen=True)
class StreamItem:
    image: np.ndarray  # uint8 (H, W, 3)
    scene: Scene  # what is drawn (a cropped scene's objects may lie partly outside the frame)
    defect: str | None  # the image defect applied, if any
    caption: str


def apply_realism(scene: Scene, caption: str, rng: np.random.Generator, realism: Realism,
                  resolution: int) -> StreamItem:
    """The web-like version of a clean (scene, caption): biased colours, noisy caption, defects."""
    spec = parse_caption(caption)
    scene = _biased(scene, spec, rng, realism)
    caption = _noisy_caption(spec, rng, realism)
    return StreamItem(*render_with_defect(scene, rng, realism, resolution), caption=caption)


def draw_defect(rng: np.random.Generator, realism: Realism) -> str | None:
    """A defect kind with probability `defect_rate` (by the kind weights), else None."""
    if realism.defect_rate <= 0 or rng.random() >= realism.defect_rate:
        return None
    kinds = [k for k in DEFECT_KINDS if realism.defect_kinds.get(k, 0) > 0]
    weights = np.array([realism.defect_kinds[k] for k in kinds], float)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def render_with_defect(scene: Scene, rng: np.random.Generator, realism: Realism, resolution: int,
                       defect: str | None = "draw") -> tuple[np.ndarray, Scene, str | None]:
    """(uint8 image, the scene drawn, the defect): `defect` "draw" draws one by `realism`, None draws none."""
    if defect == "draw":
        defect = draw_defect(rng, realism)
    if defect is not None and defect not in _DEFECTS:
        raise ValueError(f"unknown defect kind {defect!r}; known: {', '.join(DEFECT_KINDS)}")
    image, scene = _DEFECTS.get(defect, _plain)(scene, rng, resolution)
    return to_uint8(image), scene, defect


def _biased(scene: Scene, spec: PromptSpec, rng: np.random.Generator, realism: Realism) -> Scene:
    if realism.bias_colour is None:
        return scene
    objects = list(scene.objects)
    names = tuple(COLOURS)
    others = (1.0 - realism.bias_share) / (len(names) - 1)
    p = [realism.bias_share if c == realism.bias_colour else others for c in names]
    for i, claimed in enumerate(spec.objects):
        if claimed.colour is None:
            colour = names[int(rng.choice(len(names), p=p))]
            objects[i] = ShapeObject(objects[i].shape, colour, objects[i].size, objects[i].cx, objects[i].cy)
    return Scene(tuple(objects), scene.relation)


def _noisy_caption(spec: PromptSpec, rng: np.random.Generator, realism: Realism) -> str:
    objects, relation = list(spec.objects), spec.relation
    if realism.wrong_relation and relation in RELATIONS and rng.random() < realism.wrong_relation:
        relation = _other(rng, RELATIONS, relation)
    if realism.wrong_colour and rng.random() < realism.wrong_colour:
        named = [i for i, o in enumerate(objects) if o.colour is not None]
        if named:
            i = named[int(rng.integers(len(named)))]
            o = objects[i]
            objects[i] = ObjectSpec(_other(rng, tuple(COLOURS), o.colour), o.shape, o.size)
    if realism.dropped_attribute and rng.random() < realism.dropped_attribute:
        named = [(i, a) for i, o in enumerate(objects) for a in ("colour", "shape", "size") if getattr(o, a)]
        if named:
            i, attribute = named[int(rng.integers(len(named)))]
            values = {a: getattr(objects[i], a) for a in ("colour", "shape", "size")}
            values[attribute] = None
            objects[i] = ObjectSpec(**values)
    return caption_for_spec(PromptSpec(tuple(objects), relation))


def _other(rng: np.random.Generator, options, current):
    choices = [o for o in options if o != current]
    return choices[int(rng.integers(len(choices)))]


def _plain(scene: Scene, rng: np.random.Generator, resolution: int):
    return render_float(scene, resolution), scene


def _blur(scene: Scene, rng: np.random.Generator, resolution: int):
    image = render_float(scene, resolution)
    sigma = rng.uniform(*BLUR_SIGMA)
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image - np.asarray(BACKGROUND, float), ((radius, radius), (radius, radius), (0, 0)))
    rows = sum(w * padded[i : i + resolution] for i, w in enumerate(kernel))
    blurred = sum(w * rows[:, i : i + resolution] for i, w in enumerate(kernel))
    return blurred + np.asarray(BACKGROUND, float), scene


def _stray(scene: Scene, rng: np.random.Generator, resolution: int):
    image = render_float(scene, resolution)
    background = np.all(np.abs(image - np.asarray(BACKGROUND, float)) < 1.0, axis=-1)
    colour = np.asarray(COLOURS[tuple(COLOURS)[int(rng.integers(len(COLOURS)))]], float)
    if rng.random() < 0.5:  # stray pixels
        free = np.flatnonzero(background)
        count = min(len(free), int(rng.integers(STRAY_PIXELS[0], STRAY_PIXELS[1] + 1)))
        picked = rng.choice(free, size=count, replace=False)
        alpha = np.zeros(resolution * resolution)
        alpha[picked] = rng.uniform(0.5, 1.0, size=count)
        alpha = alpha.reshape(resolution, resolution)
    else:  # a faint blob, on the background only
        cy, cx = rng.uniform(0, resolution, size=2)
        radius = rng.uniform(*BLOB_RADIUS)
        ys, xs = np.mgrid[:resolution, :resolution] + 0.5
        alpha = rng.uniform(*BLOB_ALPHA) * np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0, 1)
        alpha = alpha * background
    alpha = alpha[..., None]
    return image * (1 - alpha) + colour * alpha, scene


def _faded(scene: Scene, rng: np.random.Generator, resolution: int):
    fade = rng.uniform(*FADE)
    colours = [tuple(np.asarray(COLOURS[o.colour], float) * (1 - fade) + np.asarray(GREY) * fade)
               for o in scene.objects]
    return render_float(scene, resolution, colours=colours), scene


def _cropped(scene: Scene, rng: np.random.Generator, resolution: int):
    i = int(rng.integers(len(scene.objects)))
    obj = scene.objects[i]
    axis = int(rng.integers(2))
    centre = (obj.cx, obj.cy)[axis]
    towards_low = centre < 0.5 if rng.random() < 0.8 else centre >= 0.5  # mostly the nearer border
    past = rng.uniform(*CROP) * obj.side
    target = obj.side / 2 - past if towards_low else 1 - obj.side / 2 + past
    shift = target - centre
    moved = []
    for o in scene.objects:
        cx, cy = (o.cx + shift, o.cy) if axis == 0 else (o.cx, o.cy + shift)
        moved.append(ShapeObject(o.shape, o.colour, o.size, float(np.clip(cx, 0, 1)), float(np.clip(cy, 0, 1))))
    shifted = Scene(tuple(moved), scene.relation)
    return render_float(shifted, resolution), shifted


def _tiny(scene: Scene, rng: np.random.Generator, resolution: int):
    i = int(rng.integers(len(scene.objects)))
    sides = [None] * len(scene.objects)
    sides[i] = rng.uniform(*TINY_SIDE)
    return render_float(scene, resolution, sides=sides), scene


_DEFECTS = {"blur": _blur, "stray": _stray, "faded": _faded, "cropped": _cropped, "tiny": _tiny}
