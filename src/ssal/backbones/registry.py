"""Names to registry entries: the models registered by name and the families registered by a
regular expression (``wrn-D-W``, ``timm/NAME``...), as timm keeps its registry apart from its
builders. The entries themselves live in ``ssal.backbones.families``, one module per family,
each registering its own with the decorators here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ssal.backbones.entry import ModelEntry
from ssal.errors import UserError

__all__ = ["get_entry", "list_families", "list_models", "register_family", "register_model"]

EntryFn = Callable[[], ModelEntry]
FamilyFn = Callable[[re.Match], ModelEntry]


@dataclass(frozen=True)
class _Family:
    pattern: re.Pattern
    entry: FamilyFn
    example: str
    listed: bool
    shown: str


_MODELS: dict[str, EntryFn] = {}
_FAMILIES: list[_Family] = []


def register_model(name: str) -> Callable[[EntryFn], EntryFn]:
    """Decorator: register a function returning the ``ModelEntry`` of ``name`` (called on each
    look-up, so an entry is built only when asked for)."""

    def wrap(fn: EntryFn) -> EntryFn:
        _MODELS[name] = fn
        return fn

    return wrap


def register_family(
    pattern: str, example: str, listed: bool = True, shown: str | None = None
) -> Callable[[FamilyFn], FamilyFn]:
    """Decorator: register a family of models whose names match ``pattern`` (the whole name);
    the function gets the match. ``listed`` families show their example in ``list_models``
    (timm's and torchvision's do not: they need other libraries and have their own lists);
    ``shown`` is the pattern for people (``wrn-DEPTH-WIDTH``)."""

    def wrap(fn: FamilyFn) -> FamilyFn:
        _FAMILIES.append(
            _Family(re.compile(pattern + r"\Z"), fn, example, listed, shown or pattern)
        )
        return fn

    return wrap


def list_families() -> list[dict[str, str]]:
    """Every family of names: its pattern and an example."""
    return [{"pattern": f.shown, "example": f.example} for f in _FAMILIES]


def list_models(families: bool = True) -> list[str]:
    """Registered names; with ``families``, one example per family too (e.g. ``wrn-16-4``)."""
    names = list(_MODELS)
    if families:
        names += [f.example for f in _FAMILIES if f.listed and f.example not in names]
    return names


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``UserError`` listing the known names otherwise."""
    if not isinstance(name, str):  # a config's `model: null` or a list
        raise UserError(f"model must be a model name, got {name!r}; see `ssal models`")
    if name in _MODELS:
        return _MODELS[name]()
    for family in _FAMILIES:
        m = family.pattern.match(name)
        if m:
            return family.entry(m)
    known = ", ".join(list_models())
    raise UserError(f"unknown model {name!r}; known: {known} (families take other numbers)")
