"""The shapes world's words, colours and geometry constants."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 200, 20),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
CONJUNCTION = "and"
ATTRIBUTES = ("colour", "shape", "size")
DEFECT_KINDS = ("blur", "stray", "faded", "cropped", "tiny")  # the web-like stream's image defects (realism.py)

ARTICLE = "a"
GENERIC_SHAPE = "shape"  # the noun a caption uses when the shape is unspecified

# Side of an object's box as a fraction of the image side (24 px: ~6.5 px and ~10 px).
SIZE_FRACTION: dict[str, float] = {"small": 0.27, "large": 0.42}
# Each spatial relation of a to b as (axis, sign): axis 0 = x, 1 = y (downwards); sign of a - b.
RELATION_AXIS: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (1, -1),
    "below": (1, 1),
}


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    words = {ARTICLE, GENERIC_SHAPE, CONJUNCTION, *COLOURS, *SHAPES, *SIZES}
    for relation in RELATIONS:
        words.update(relation.split())
    return sorted(words)
