"""The caption grammar: specs to captions, captions to specs, and training captions for scenes."""
from __future__ import annotations

import difflib

import numpy as np

from .scene import ObjectSpec, PromptSpec, Scene
from .vocab import ARTICLE, COLOURS, CONJUNCTION, GENERIC_SHAPE, RELATIONS, SHAPES, SIZES, vocabulary

SIZE_PROB = 0.3  # a training caption names the sizes
DROP_PROB = 0.15  # a single-object training caption drops its colour (and, separately, its shape)
_JOINERS = RELATIONS + (CONJUNCTION,)


def _phrase(obj: ObjectSpec) -> str:
    words = [ARTICLE, obj.size, obj.colour, obj.shape or GENERIC_SHAPE]
    return " ".join(w for w in words if w)


def caption_for_spec(spec: PromptSpec) -> str:
    """The caption of a spec: "a [size] [colour] shape-or-'shape'" [relation-or-"and" second object]."""
    phrases = [_phrase(o) for o in spec.objects]
    return phrases[0] if len(phrases) == 1 else f"{phrases[0]} {spec.relation} {phrases[1]}"


def _optional(words: list[str], i: int, options) -> tuple[str | None, int]:
    if i < len(words) and words[i] in options:
        return words[i], i + 1
    return None, i


def _parse_object(words: list[str], i: int) -> tuple[ObjectSpec, int]:
    if i >= len(words) or words[i] != ARTICLE:
        raise ValueError(f"expected {ARTICLE!r} at word {i + 1}")
    size, i = _optional(words, i + 1, SIZES)
    colour, i = _optional(words, i, COLOURS)
    shape, j = _optional(words, i, SHAPES + (GENERIC_SHAPE,))
    if j == i:
        raise ValueError(f"expected a shape or {GENERIC_SHAPE!r} at word {i + 1}")
    return ObjectSpec(colour, None if shape == GENERIC_SHAPE else shape, size), j


def _parse_joiner(words: list[str], i: int) -> tuple[str, int]:
    for joiner in _JOINERS:
        n = len(joiner.split())
        if words[i : i + n] == joiner.split():
            return joiner, i + n
    raise ValueError(f"expected one of {_JOINERS} at word {i + 1}")


def parse_caption(caption: str) -> PromptSpec:
    """The spec a caption claims (case and spacing are ignored); ValueError if it is not grammatical."""
    words = caption.lower().split()
    try:
        first, i = _parse_object(words, 0)
        if i == len(words):
            return PromptSpec((first,))
        relation, i = _parse_joiner(words, i)
        second, i = _parse_object(words, i)
        if i != len(words):
            raise ValueError(f"unexpected words from word {i + 1}")
    except ValueError as error:
        raise ValueError(f"cannot parse caption {caption!r}: {error}") from None
    return PromptSpec((first, second), relation)


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption for a scene, at a random level of detail.

    Sizes are named with probability SIZE_PROB; a single object's colour or shape is dropped with
    probability DROP_PROB each, so "a circle" is seen with every colour. Two objects always keep
    colour, shape and the scene's relation (or "and").
    """
    drop = set() if rng.random() < SIZE_PROB else {"size"}
    if len(scene.objects) == 1:
        u = rng.random()
        drop |= {"colour"} if u < DROP_PROB else {"shape"} if u < 2 * DROP_PROB else set()
    return caption_for_spec(PromptSpec.from_scene(scene, drop))


def record_problem(row: dict) -> str | None:
    """What is wrong with a prompt record ({"prompt", optional "spec"}) of the shapes world, or None: a
    word outside the vocabulary (the tiny tokenizer would read it as unknown), more words than any
    caption has (the tokenizer would cut it), text the grammar cannot parse, a malformed spec, or text
    that claims something other than its spec (rewards and evaluation read the spec)."""
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        return f"'prompt' is {prompt!r}; expected a caption (text)"
    words, known = prompt.lower().split(), vocabulary()
    unknown = [w for w in words if w not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (f"prompt {prompt!r}: word {unknown[0]!r} is not in the vocabulary{hint}; expected words of: "
                f"{', '.join(known)}")
    longest = len(caption_for_spec(PromptSpec((ObjectSpec("red", "circle", "small"),) * 2, RELATIONS[0])).split())
    if len(words) > longest:
        return f"prompt {prompt!r} has {len(words)} words; expected at most {longest}, the longest caption"
    try:
        claimed = parse_caption(prompt)
    except ValueError as exc:
        return f"{exc}; expected a caption of the shapes world, e.g. 'a red circle left of a blue square'"
    if row.get("spec") is None:
        return None
    try:
        spec = PromptSpec.from_dict(row["spec"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return f"'spec' is not a prompt spec ({exc}); expected {{'objects': [...], 'relation': ...}}"
    if spec != claimed:
        return f"prompt {prompt!r} disagrees with its spec, which reads {caption_for_spec(spec)!r}"
    return None
