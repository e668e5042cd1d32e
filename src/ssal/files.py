"""Small file helpers: writes that never leave half a file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json", "write_text"]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: str | Path, doc: object) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    return write_text(path, json.dumps(doc, indent=2) + "\n")
