"""Image model families (SD 1.5, SDXL): each a subpackage of this one.

A family's folder holds `traits.py` (`TRAITS`: sizes, pricing reference, what its folders are
called; no torch), `family.py` (`FAMILY`: an ImageFamily that loads, encodes prompts and builds
the task pipelines; torch) and `skeleton/` (the configs that load its single-file checkpoints
offline). The rest of the server asks the family by name and never names a pipeline class, so
adding a family is adding a folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from daguerre.engine.families.traits import FamilyTraits

if TYPE_CHECKING:
    from daguerre.engine.diffusers_classes import DiffusionPipeline
    from daguerre.engine.families.base import ImageFamily


@cache
def names() -> tuple[str, ...]:
    return tuple(sorted(module.name for module in pkgutil.iter_modules(__path__) if module.ispkg))


def _check(name: str) -> None:
    if name not in names():
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(names())}")


@cache
def traits(name: str) -> FamilyTraits:
    _check(name)
    found: FamilyTraits = importlib.import_module(f"{__name__}.{name}.traits").TRAITS
    return found


@cache
def family(name: str) -> ImageFamily:
    """The family's engine side (imports torch and diffusers)."""
    _check(name)
    found: ImageFamily = importlib.import_module(f"{__name__}.{name}.family").FAMILY
    return found


def by_pipeline_class(class_name: str) -> FamilyTraits | None:
    """The family whose diffusers folders name `class_name` in model_index.json."""
    for name in names():
        if traits(name).pipeline_class == class_name:
            return traits(name)
    return None


def of_pipeline(pipe: DiffusionPipeline) -> ImageFamily:
    """The family a loaded (or derived) pipeline belongs to."""
    for name in names():
        if family(name).owns(pipe):
            return family(name)
    raise TypeError(f"{type(pipe).__name__} belongs to no model family")
