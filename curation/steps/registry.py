"""Steps by name: the built-ins register themselves with `@register`; a recipe may also name a step
defined elsewhere, as `package.module:ClassName` or as an entry point of the `curate.steps` group
(`[project.entry-points."curate.steps"] my_filter = "mypkg.filters:MyFilter"` in that package's
pyproject.toml).

Naming a module in a recipe imports it, as naming a step class in any pipeline library does: recipes
are configuration written by their user, never data read from an input or the store.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from curation.steps.base import Step

ENTRY_POINT_GROUP = "curate.steps"
REGISTRY: dict[str, type[Step]] = {}

S = TypeVar("S", bound=type[Step])


class UnknownStepError(KeyError):
    """A recipe names a step that is neither registered, an entry point, nor an importable Step class."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: S) -> S:
    """Class decorator: make a step available to recipes by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: a step needs a `name`")
    existing = REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"step name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    REGISTRY[name] = cls
    return cls


def step_class(name: str) -> type[Step]:
    """The step a recipe's `step:` names."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        return _import(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            return _checked(point.load(), f"entry point {name!r} ({point.value})")
    raise UnknownStepError(f"unknown step {name!r}; valid steps: {', '.join(sorted(known_names()))}, or a step "
                           "class as package.module:ClassName")


def known_names() -> list[str]:
    """The registered steps and the installed `curate.steps` entry points."""
    return sorted({*REGISTRY, *(point.name for point in entry_points(group=ENTRY_POINT_GROUP))})


def _import(path: str) -> type[Step]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStepError(f"step {path!r}: cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, attribute, None)
    if cls is None:
        raise UnknownStepError(f"step {path!r}: module {module_name!r} has no {attribute!r}")
    return _checked(cls, f"step {path!r}")


def _checked(cls: object, what: str) -> type[Step]:
    if not (isinstance(cls, type) and issubclass(cls, Step) and isinstance(getattr(cls, "name", None), str)):
        raise UnknownStepError(f"{what} is not a step class (a subclass of curation.steps.Step with a `name`)")
    return cls
