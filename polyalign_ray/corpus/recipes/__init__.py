"""Source recipes: the PolyAlign paper's 14 corpora, each mapped from its native layout to our records.

``polyalign prepare --source NAME`` applies the recipe ``NAME`` (see :data:`catalog.RECIPES`) to every input row,
or, without ``--input``, first loads the dataset from the Hugging Face Hub (:mod:`loading`). Pure Python: the
mapping runs inside the shared per-row step, identically in the in-process and the Ray Data engines.
"""

from polyalign_ray.corpus.recipes.catalog import RECIPES, UnknownSourceError, recipe_named

__all__ = ["RECIPES", "UnknownSourceError", "recipe_named"]
