"""Small file helpers: writes that never leave half a file behind, bounded reads of the
small text and JSON files users hand in (model cards, groupings, shard metadata), and the
one-line form of an error message."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssal.errors import UserError

__all__ = ["MAX_SMALL_FILE", "read_json", "read_text", "squeeze", "write_json", "write_text"]

MAX_SMALL_FILE = 16 * 2**20
"""Largest model card, groupings or metadata file read (ImageNet's take under 100 kB)."""


def squeeze(message: object) -> str:
    """``message`` (an exception, or any text) on one line: runs of whitespace, newlines
    included, become one space (errors a user sees end in one line)."""
    return " ".join(str(message).split())


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def write_json(path: str | Path, doc: object) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    return write_text(path, json.dumps(doc, indent=2) + "\n")


def read_text(path: str | Path, max_bytes: int = MAX_SMALL_FILE) -> str:
    """A UTF-8 text file of at most ``max_bytes``; ``ValueError`` naming it otherwise."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size} bytes, more than the {max_bytes} such a file may hold")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None


def read_json(path: str | Path, max_bytes: int = MAX_SMALL_FILE) -> object:
    """``read_text`` parsed as JSON; ``ValueError`` naming the file for bad JSON, numbers too
    long to convert and nesting too deep to parse."""
    text = read_text(path, max_bytes)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: not valid JSON ({squeeze(e)[:200]})") from None
