"""Config files of ``ssal fit|validate|test``: which ones a command line gives, and reading
them as Lightning's CLI will, but refusing first what could run code or exhaust memory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssal.errors import UserError
from ssal.files import squeeze

__all__ = ["MAX_CONFIG_BYTES", "MAX_CONFIG_VALUES", "check_config", "config_files"]

MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_VALUES = 100_000
"""Most values a config may hold once YAML aliases are expanded ("billion laughs")."""


def config_files(argv: Sequence[str]) -> list[Path]:
    """The files given with ``--config``/``-c`` in ``argv``."""
    found = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            found.append(Path(arg.split("=", 1)[1]))
    return found


def _expanded_size(node: Any, seen: dict[int, int]) -> int:
    """Values a YAML node stands for with every alias expanded (memoised: linear time)."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1  # a recursive alias counts once instead of looping
    children = node.value if isinstance(node.value, list) else []
    items = (
        [v for pair in children for v in pair]
        if children and isinstance(children[0], tuple)
        else children
    )
    size = 1 + sum(_expanded_size(child, seen) for child in items)
    seen[id(node)] = size
    return size


def check_config(path: Path) -> None:
    """Read a config as ``ssal fit`` will, refusing what could run code or exhaust memory:
    a file over 1 MiB, text that is not UTF-8 YAML, tags that construct Python objects
    (``!!python/object``: refused by the safe loader, nothing runs) and aliases expanding to
    more than ``MAX_CONFIG_VALUES`` values. Raises ``UserError``/``FileNotFoundError``."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {path.stat().st_size} bytes, too large for a config")
    try:
        text = path.read_bytes().decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise UserError(f"aliases expand it to more than {MAX_CONFIG_VALUES} values")
        yaml.safe_load(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        reason = squeeze(e)[:300] or type(e).__name__
        raise UserError(f"{path}: not a usable config ({reason})") from None
