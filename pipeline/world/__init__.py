"""The shapes world: scenes of coloured shapes, their captions, a renderer and an exact detector."""
from .captions import caption_for_spec, caption_scene, parse_caption
from .detect import DetectedObject, check_claims, claim_score, detect, exact_match, relation_between, scene_accuracy
from .render import render
from .scene import ObjectSpec, PromptSpec, Scene, ShapeObject, sample_scene, sample_spec
from .stream import SceneStream
from .vocab import ATTRIBUTES, BACKGROUND, COLOURS, CONJUNCTION, RELATIONS, SHAPES, SIZES, vocabulary

__all__ = [
    "ATTRIBUTES",
    "BACKGROUND",
    "COLOURS",
    "CONJUNCTION",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "DetectedObject",
    "ObjectSpec",
    "PromptSpec",
    "Scene",
    "SceneStream",
    "ShapeObject",
    "caption_for_spec",
    "caption_scene",
    "check_claims",
    "claim_score",
    "detect",
    "exact_match",
    "parse_caption",
    "relation_between",
    "render",
    "sample_scene",
    "sample_spec",
    "scene_accuracy",
    "vocabulary",
]
