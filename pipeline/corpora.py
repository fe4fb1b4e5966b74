"""The prompt corpora, named here once (the prompts stage writes one train and one eval file each).

- `preference`: any caption: single objects, pairs joined by "and", under-specified ones;
- `composition`: two objects in a spatial relation ("a red circle left of a blue square");
- `diversity`: under-specified prompts ("a circle", "a red shape");
- `single`: one object, its size sometimes named.

Torch-free: params validation checks `rl.tasks[].prompts` against these names.
"""
PREFERENCE, COMPOSITION, DIVERSITY, SINGLE = "preference", "composition", "diversity", "single"

# Each corpus's train/eval split is seeded with its index here: reordering changes every split.
CORPORA = (PREFERENCE, COMPOSITION, DIVERSITY, SINGLE)
# The same corpora in the order every sample set lists its rows (eval_sets.eval_rows).
EVAL_CORPORA = (SINGLE, COMPOSITION, DIVERSITY, PREFERENCE)
# The fully specified corpora: detector accuracy (composition, single- and two-object) is measured on these.
SPECIFIED_CORPORA = (SINGLE, COMPOSITION)
# What a task or corpus name may be: names key metrics, CSV rows, report sections and image file names.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
NAME_RULE = "letters, digits, '_' or '-'"
