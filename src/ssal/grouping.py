"""Groupings: coarse labels derived from the classifier's own confusions.

A grouping is an int array ``g`` of length C with ``g[c]`` in ``0..G-1`` and no empty group.
``group_classes`` runs the paper's greedy algorithm on a confusion matrix; ``Grouping`` holds
one grouping with its name and mode; ``save_groupings``/``load_groupings`` write and read the
plain JSON file that carries them between runs (``load_groupings`` also reads the authors' text
files); ``read_label_file`` reads one grouping in the authors' text format (their published
groupings); ``groupings_from_spec`` is what a config's ``groupings:`` names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ssal.errors import UserError
from ssal.files import read_text, write_text

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR100_SUPERCLASSES",
    "Grouping",
    "check_class_names",
    "check_assignment",
    "cifar100_superclasses",
    "group_classes",
    "groupings_from_confusion",
    "groupings_from_spec",
    "load_groupings",
    "read_label_file",
    "save_groupings",
]

Mode = Literal["similar", "split"]
FILE_FORMAT = "ssal-groupings"
FILE_VERSION = 1


def _distance_matrix(confusion: np.ndarray, mode: str) -> np.ndarray:
    """Pairwise class distances from a confusion matrix, as the authors define them."""
    s = confusion.astype(np.float64, copy=True)
    np.fill_diagonal(s, 0.0)
    s = (s + s.T) / 2.0
    if mode == "similar":
        d = s.max() - s
        np.fill_diagonal(d, 0.0)
        return d
    return s


def _pick(values: np.ndarray, candidates: np.ndarray, best: str, rng: np.random.Generator) -> int:
    """Index in ``candidates`` whose value is the max/min, ties broken at random (seeded)."""
    v = values[candidates]
    target = v.max() if best == "max" else v.min()
    tied = candidates[np.isclose(v, target, rtol=1e-12, atol=1e-12)]
    return int(tied[0] if len(tied) == 1 else rng.choice(tied))


def group_classes(
    confusion: np.ndarray | Sequence[Sequence[float]],
    num_groups: int,
    mode: Mode = "similar",
    size_margin: float = 1.1,
    seed: int = 0,
) -> np.ndarray:
    """Partition C classes into ``num_groups`` groups from a (C, C) confusion matrix.

    ``mode="similar"`` puts classes the classifier confuses into the same group; ``"split"``
    puts them into different groups. No group holds more than ``ceil(size_margin * C / G)``
    classes. Same inputs and seed give the same grouping. Returns an int64 array of length C.
    """
    m = np.asarray(confusion, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise UserError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise UserError("confusion matrix contains NaN or infinite values")
    if np.any(m < 0):
        raise UserError("confusion matrix contains negative values")
    if mode not in ("similar", "split"):
        raise UserError(f"mode must be 'similar' or 'split', got {mode!r}")
    c = m.shape[0]
    if not 1 <= num_groups <= c:
        raise UserError(f"number of groups must be between 1 and the {c} classes, got {num_groups}")
    if size_margin < 1.0:
        raise UserError(f"size_margin must be >= 1.0 so that all classes fit, got {size_margin}")

    rng = np.random.default_rng(seed)
    d = _distance_matrix(m, mode)
    capacity = size_margin * c / num_groups
    assignment = np.full(c, -1, dtype=np.int64)
    sums = np.zeros((c, num_groups))  # sums[k, g] = total distance of class k to group g
    counts = np.zeros(num_groups)

    def assign(k: int, g: int) -> None:
        assignment[k] = g
        sums[:, g] += d[:, k]
        counts[g] += 1

    assign(_pick(d.sum(axis=1), np.arange(c), "min", rng), 0)
    for g in range(1, num_groups):
        free = np.flatnonzero(assignment < 0)
        nearest = (sums[free, :g] / counts[:g]).min(axis=1)
        values = np.full(c, -np.inf)
        values[free] = nearest
        assign(_pick(values, free, "max", rng), g)

    while np.any(assignment < 0):
        free = np.flatnonzero(assignment < 0)
        mean = sums[free] / counts
        values = np.full(c, np.inf)
        values[free] = mean.min(axis=1)
        k = _pick(values, free, "min", rng)
        row = sums[k] / counts
        row[counts >= capacity] = np.inf
        assign(k, _pick(row, np.flatnonzero(np.isfinite(row)), "min", rng))
    return assignment


def check_assignment(
    assignment: np.ndarray | Sequence[int],
    num_classes: int | None = None,
    num_groups: int | None = None,
    what: str = "grouping",
) -> np.ndarray:
    """Validate a grouping array and return it as int64; ``ValueError`` says what is wrong."""
    try:
        a = np.asarray(assignment)
    except (ValueError, TypeError):  # ragged lists
        a = np.empty(0)
    if a.ndim != 1 or a.size == 0:
        raise UserError(f"{what}: assignment must be a non-empty list of group indices")
    if a.dtype.kind not in "iu" and (
        a.dtype.kind not in "f"
        or not np.all(np.isfinite(a))
        or np.any(a != np.round(a))
        or np.any(np.abs(a) > 2**53)  # past exact whole floats (and int64's range)
    ):
        raise UserError(f"{what}: assignment must hold integer group indices")
    a = a.astype(np.int64)
    if num_classes is not None and len(a) != num_classes:
        raise UserError(f"{what}: has {len(a)} classes but the model has {num_classes}")
    if num_groups is not None and (
        not isinstance(num_groups, (int, np.integer)) or isinstance(num_groups, bool)
    ):
        raise UserError(f"{what}: num_groups must be a whole number, got {num_groups!r}")
    g = int(a.max()) + 1 if num_groups is None else int(num_groups)
    if a.min() < 0 or a.max() >= g:
        raise UserError(f"{what}: group indices must lie in 0..{g - 1}, found {a.min()}..{a.max()}")
    if g > len(a):  # every group needs a class (checked before np.arange(g) is allocated)
        raise UserError(f"{what}: {g} groups for {len(a)} classes; every group needs a class")
    empty = np.setdiff1d(np.arange(g), a)
    if len(empty):
        raise UserError(
            f"{what}: groups {empty.tolist()[:10]} are empty; every group needs a class"
        )
    return a


@dataclass(frozen=True, eq=False)
class Grouping:
    """One partition of the classes: ``assignment[c]`` is the group of class ``c``.

    Groupings are equal when their assignments, names, modes and group counts are (so cards
    holding them compare), and hash alike then. ``class_names`` and ``source``: the names of
    the classes, in order, and the file, where the grouping was read from a file that names
    them (``check_class_names`` holds them against the data's); neither takes part in
    comparisons or ``to_dict``.
    """

    assignment: np.ndarray
    name: str = ""
    mode: str = "given"
    num_groups: int = field(default=0)
    class_names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        a = check_assignment(
            self.assignment, num_groups=self.num_groups or None, what=f"grouping {self.name!r}"
        )
        object.__setattr__(self, "assignment", a)
        object.__setattr__(self, "num_groups", self.num_groups or int(a.max()) + 1)
        if not self.name:
            object.__setattr__(self, "name", f"{self.mode}-{self.num_groups}")

    def _key(self) -> tuple:
        return (tuple(self.assignment.tolist()), self.name, self.mode, self.num_groups)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grouping):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def num_classes(self) -> int:
        return len(self.assignment)

    def members(self, group: int) -> list[int]:
        """Classes in ``group``."""
        return np.flatnonzero(self.assignment == group).tolist()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mode": self.mode,
            "num_groups": self.num_groups,
            "assignment": self.assignment.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, assignment: np.ndarray | None = None) -> Grouping:
        """Inverse of ``to_dict`` (``assignment``: an already checked array to use instead)."""
        a = np.asarray(d["assignment"]) if assignment is None else assignment
        return cls(
            a,
            name=str(d.get("name", "")),
            mode=str(d.get("mode", "given")),
            num_groups=int(d.get("num_groups") or 0),
        )

    @classmethod
    def from_confusion(
        cls,
        confusion: np.ndarray,
        num_groups: int,
        mode: Mode = "similar",
        size_margin: float = 1.1,
        seed: int = 0,
    ) -> Grouping:
        """Run ``group_classes`` and name the result ``"{mode}-{num_groups}"``."""
        a = group_classes(confusion, num_groups, mode=mode, size_margin=size_margin, seed=seed)
        return cls(a, name=f"{mode}-{num_groups}", mode=mode, num_groups=num_groups)


def groupings_from_confusion(
    confusion: np.ndarray,
    sizes: Sequence[int],
    mode: Mode = "similar",
    size_margin: float = 1.1,
    seed: int = 0,
) -> list[Grouping]:
    """One grouping of a ``(C, C)`` confusion matrix per number of groups in ``sizes`` (the
    paper's branches: 20, 33 and 50 groups of CIFAR-100's classes)."""
    return [Grouping.from_confusion(confusion, g, mode, size_margin, seed) for g in sizes]


def as_grouping(g: Grouping | np.ndarray | Sequence[int]) -> Grouping:
    """Accept a ``Grouping`` or a plain assignment array."""
    return g if isinstance(g, Grouping) else Grouping(np.asarray(g))


def save_groupings(
    path: str | Path,
    groupings: Sequence[Grouping],
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write groupings (and class names when known) to a JSON file; return its path."""
    groupings = [as_grouping(g) for g in groupings]
    if not groupings:
        raise UserError("no groupings to save")
    c = groupings[0].num_classes
    for g in groupings:
        check_assignment(g.assignment, num_classes=c, num_groups=g.num_groups, what=g.name)
    if class_names is not None and len(class_names) != c:
        raise UserError(f"{len(class_names)} class names given for {c} classes")
    doc = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "num_classes": c,
        "class_names": list(class_names) if class_names is not None else None,
        "groupings": [g.to_dict() for g in groupings],
    }
    return write_text(path, json.dumps(doc, indent=1) + "\n")


def load_groupings(
    path: str | Path, num_classes: int | None = None
) -> tuple[list[Grouping], list[str] | None]:
    """Read a groupings file; check every grouping against ``num_classes`` when given.

    Two formats: ssal's JSON file (``save_groupings``; any number of groupings, class names)
    or the authors' text file, one grouping with line ``c`` holding the group of class ``c``,
    written as a number (``1.400000000000000000e+01``). Returns ``(groupings, class_names)``;
    raises ``FileNotFoundError`` or ``ValueError`` with a message naming the file and what is
    wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"groupings file not found: {path}")
    text = read_text(path)
    if not text.lstrip().startswith(("{", "[")):
        return [_label_grouping(path, text, num_classes)], None
    return _json_groupings(path, text, num_classes)


def _json_groupings(
    path: Path, text: str, num_classes: int | None
) -> tuple[list[Grouping], list[str] | None]:
    """An ssal JSON groupings file, checked value by value."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, huge numbers, deep nesting
        raise UserError(f"{path}: not a JSON groupings file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groupings"), list):
        raise UserError(f"{path}: expected an object with a 'groupings' list")
    c = doc.get("num_classes", num_classes)
    if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
        raise UserError(f"{path}: num_classes must be a positive whole number, got {c!r}")
    if num_classes is not None and c != num_classes:
        raise UserError(f"{path}: written for {c} classes but the model has {num_classes}")
    names = doc.get("class_names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise UserError(f"{path}: class_names must be a list of names")
    if names is not None and c is not None and len(names) != c:
        raise UserError(f"{path}: {len(names)} class names for {c} classes")
    out = []
    for i, entry in enumerate(doc["groupings"]):
        if not isinstance(entry, dict) or "assignment" not in entry:
            raise UserError(f"{path}: grouping {i} has no 'assignment'")
        label = f"{path}: grouping {str(entry.get('name', i))[:60]!r}"
        a = check_assignment(entry["assignment"], c, entry.get("num_groups"), what=label)
        g = Grouping.from_dict(entry, a)
        if names is not None:
            g = replace(g, class_names=tuple(names), source=str(path))
        out.append(g)
    if not out:
        raise UserError(f"{path}: holds no groupings")
    return out, names


def check_class_names(groupings: Sequence[Grouping], class_names: Sequence[str] | None) -> None:
    """Refuse groupings read from a file that names other classes, or the same classes in
    another order, than the data (``class_names``): their branches would learn groups of the
    wrong classes. Files that name no classes (the authors' text files) pass: only the count
    is known there. ``ValueError`` naming the file and the first class that differs."""
    if class_names is None:
        return
    for g in groupings:
        if g.class_names is None or list(g.class_names) == list(class_names):
            continue
        if len(g.class_names) != len(class_names):
            raise UserError(
                f"{g.source}: names {len(g.class_names)} classes, the data {len(class_names)}"
            )
        i, ours, theirs = next(
            (i, a, b)
            for i, (a, b) in enumerate(zip(g.class_names, class_names, strict=True))
            if a != b
        )
        raise UserError(
            f"{g.source}: class {i} is {ours!r} there but {theirs!r} in the data; these "
            "groupings were made for other classes or another order (make them for this data "
            "with ssal group)"
        )


def _cifar100_tables() -> tuple[list[str], list[str], np.ndarray]:
    supers = {
        "aquatic_mammals": "beaver dolphin otter seal whale",
        "fish": "aquarium_fish flatfish ray shark trout",
        "flowers": "orchid poppy rose sunflower tulip",
        "food_containers": "bottle bowl can cup plate",
        "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
        "household_electrical_devices": "clock keyboard lamp telephone television",
        "household_furniture": "bed chair couch table wardrobe",
        "insects": "bee beetle butterfly caterpillar cockroach",
        "large_carnivores": "bear leopard lion tiger wolf",
        "large_man-made_outdoor_things": "bridge castle house road skyscraper",
        "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
        "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
        "medium_mammals": "fox porcupine possum raccoon skunk",
        "non-insect_invertebrates": "crab lobster snail spider worm",
        "people": "baby boy girl man woman",
        "reptiles": "crocodile dinosaur lizard snake turtle",
        "small_mammals": "hamster mouse rabbit shrew squirrel",
        "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
        "vehicles_1": "bicycle bus motorcycle pickup_truck train",
        "vehicles_2": "lawn_mower rocket streetcar tank tractor",
    }
    coarse = list(supers)
    fine = sorted(name for members in supers.values() for name in members.split())
    index = {name: i for i, name in enumerate(fine)}
    a = np.empty(len(fine), dtype=np.int64)
    for g, members in enumerate(supers.values()):
        for name in members.split():
            a[index[name]] = g
    return fine, coarse, a


CIFAR100_CLASSES, CIFAR100_SUPERCLASSES, _CIFAR100_COARSE = _cifar100_tables()


def cifar100_superclasses() -> Grouping:
    """CIFAR-100's 20 official superclasses as a grouping of its 100 fine labels."""
    return Grouping(_CIFAR100_COARSE.copy(), name="cifar100-superclasses", mode="hierarchy")


BUILTIN_HIERARCHIES = {"cifar100-superclasses": cifar100_superclasses}


def read_label_file(path: str | Path, num_classes: int | None = None) -> Grouping:
    """One grouping in the authors' text format: line ``c`` holds the group of class ``c``,
    written as a number (``numpy.savetxt`` writes ``1.400000000000000000e+01`` for 14).

    Checks that every value is a whole group index >= 0, that there is one per class
    (``num_classes`` when given) and that no group is empty; ``ValueError`` (one line, naming
    the file) otherwise. The grouping is named after the file; its mode is ``similar`` or
    ``split`` when the name says ``group_similar`` or ``split_similar``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"groupings file not found: {path}")
    return _label_grouping(path, read_text(path), num_classes)


def _label_grouping(path: Path, text: str, num_classes: int | None) -> Grouping:
    """``read_label_file`` on the file's text."""
    values = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where, shown = f"{path}: line {i}", line.strip()[:40]
        if len(line.split()) != 1:
            raise UserError(f"{where}: {shown!r} holds more than one value")
        try:
            v = float(line)
        except ValueError:
            raise UserError(f"{where}: {shown!r} is not a number") from None
        if not math.isfinite(v) or v != int(v) or not 0 <= v < 2**31:
            raise UserError(f"{where}: {shown!r} is not a group index (0, 1, 2, ...)")
        values.append(int(v))
    if not values:
        raise UserError(f"{path}: holds no group indices")
    if num_classes is not None and len(values) != num_classes:
        raise UserError(
            f"{path}: {len(values)} group indices (one per class) but the data has "
            f"{num_classes} classes"
        )
    a = check_assignment(np.asarray(values, dtype=np.int64), what=str(path))
    name = path.stem
    mode = "similar" if "group_similar" in name else "split" if "split_similar" in name else "given"
    return Grouping(a, name=name, mode=mode)


def groupings_from_spec(
    spec: str | Sequence[str] | None, num_classes: int
) -> list[Grouping] | None:
    """What a config's ``groupings:`` names: ``None``/``"none"`` (a baseline), a built-in
    hierarchy (``cifar100-superclasses``), a groupings file (ssal JSON, or the authors' text
    format: one grouping), or a list of them (their groupings in order, one per branch).
    ``"auto"`` (derived from a probe during training) is resolved by the training layer."""
    if spec is not None and not isinstance(spec, str):
        found = [g for item in spec for g in groupings_from_spec(item, num_classes) or []]
        return found or None
    if spec is None or spec.lower() in ("none", "baseline", ""):
        return None
    if spec in BUILTIN_HIERARCHIES:
        g = BUILTIN_HIERARCHIES[spec]()
        if g.num_classes != num_classes:
            raise UserError(f"{spec} covers {g.num_classes} classes, the data has {num_classes}")
        return [g]
    if spec == "auto":
        raise UserError(
            "groupings 'auto' are derived by a probe before training "
            "(ssal.trainer.derive_groupings)"
        )
    return load_groupings(spec, num_classes)[0]


def capacity_bound(num_classes: int, num_groups: int, size_margin: float) -> int:
    """The largest group ``group_classes`` can produce: ``ceil(size_margin * C / G)``."""
    return math.ceil(size_margin * num_classes / num_groups)
