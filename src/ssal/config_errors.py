"""jsonargparse's errors in one line each: which key, where it came from (the command line or
which config file) and, where one is close, the key that was meant (``ConfigError``).

jsonargparse words its errors for developers (nested "Parser key" blocks, Union subtypes,
``typing.Literal[...]``); the regular expressions below read those messages, so they are all in
this module (tests/test_cli.py checks the lines they make from the installed jsonargparse).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssal.args import flat_keys, renamed_key
from ssal.config_files import config_files
from ssal.errors import UserError
from ssal.files import squeeze

__all__ = ["ConfigError", "explain_config_error", "known_keys", "plain_validation_error"]


class ConfigError(UserError):
    """A config or command-line value Lightning's CLI refused, explained in one line;
    ``located`` when the line already says where the value came from."""

    def __init__(self, message: str, located: bool = False) -> None:
        super().__init__(message)
        self.located = located


def _keys_of(cls: Any, prefix: str) -> list[str]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [f"{prefix}{n}" for n, p in params.items() if p.kind in kinds and n != "self"]


def _datamodule_classes(class_path: str | None = None) -> dict[str, Any]:
    """ssal's datamodule classes by public class path: all of them, or the one ``class_path``
    names (a full path, or a class name as ``--data`` takes it)."""
    import importlib

    from ssal.data.registry import DATAMODULES

    found = {}
    for path, (module, name) in DATAMODULES.items():
        if class_path is None or class_path in (path, name):
            found[path] = getattr(importlib.import_module(module), name)
    return found


def known_keys(class_path: str | None = None) -> list[str]:
    """Every key a config may set: trainer, model, checkpoint, data (the datamodule
    ``class_path`` names, or any of ssal's when it is not known)."""
    import lightning as L

    from ssal.callbacks import LastAndBestCheckpoint
    from ssal.train import SSALModule

    keys = ["seed_everything", "ckpt_path", "config", "trainer", "model", "data", "checkpoint"]
    keys += _keys_of(L.Trainer, "trainer.") + _keys_of(SSALModule, "model.") + flat_keys()
    keys += _keys_of(LastAndBestCheckpoint, "checkpoint.")
    for cls in (_datamodule_classes(class_path) or _datamodule_classes()).values():
        keys += _keys_of(cls, "data.init_args.") + _keys_of(cls, "data.")
    return sorted(set(keys))


_UNSET = object()


def _config_values(key: str, argv: Sequence[str]) -> list[Any]:
    """The value each config file of ``argv`` gives the dotted ``key``, in file order (files
    that do not set it, or cannot be read, give none)."""
    import yaml

    values = []
    for path in config_files(argv):
        try:
            doc = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for part in key.split("."):
            doc = doc.get(part, _UNSET) if isinstance(doc, dict) else _UNSET
        if doc is not _UNSET:
            values.append(doc)
    return values


def _data_class_path(argv: Sequence[str]) -> str | None:
    """The datamodule a command uses: ``--data X`` / ``--data.class_path X`` on the command
    line, else the last config file that names one."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--data", "--data.class_path") and not argv[i + 1].startswith("-"):
            return argv[i + 1]
    named = [v for v in _config_values("data.class_path", argv) if isinstance(v, str)]
    return named[-1] if named else None


def _source(key: str, argv: Sequence[str]) -> str:
    """Where a key came from: the command line, or the config file(s)."""
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv):
        return "on the command line"
    configs = [str(c) for c in config_files(argv)]
    leaf = key.rsplit(".", 1)[-1]
    named = [c for c in configs if Path(c).is_file() and leaf in Path(c).read_text()]
    return f"in {', '.join(named or configs)}" if configs else "in the config"


def _value_for_group(key: str, argv: Sequence[str]) -> bool:
    """Whether ``key`` (a group such as ``model.groupings``) was given a plain value, as the
    flat layout spelled it: ``--key VALUE`` on the command line, or text or a list in a config
    (jsonargparse reads text given for a group as a file of the group's values)."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{key}="):
            return not arg.split("=", 1)[1].lstrip().startswith("{")
        if arg == f"--{key}" and i + 1 < len(argv):
            return not argv[i + 1].lstrip().startswith("{")
    return any(isinstance(v, (str, list)) for v in _config_values(key, argv))


def _did_you_mean(key: str, argv: Sequence[str] = ()) -> str:
    """For an unknown key: which other of ssal's datamodules takes it, or close keys of the
    classes in use (the same parent, never the key itself)."""
    class_path = _data_class_path(argv)
    parent, _, leaf = key.rpartition(".")
    if parent in ("data", "data.init_args") and class_path:
        takers = {
            c: p for p, c in _datamodule_classes().items() if f"data.{leaf}" in _keys_of(c, "data.")
        }
        if takers:
            verb = "does" if len(takers) == 1 else "do"
            return (
                f" ({class_path} takes no {leaf}; {' and '.join(sorted(takers.values()))} {verb})"
            )
    siblings = {
        k.rpartition(".")[2]: k
        for k in known_keys(class_path)
        if k != key and k.rpartition(".")[0] == parent
    }
    close = difflib.get_close_matches(leaf, list(siblings), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(siblings[c] for c in close)}?" if close else ""


def _unknown_key(message: str) -> str | None:
    """The key an "unknown option" message of jsonargparse is about, if it is one."""
    nested = re.search(
        r'Parser key "([^"]+)":.*?Option \'([^\']+)\' is not accepted', message, re.S
    )
    if nested:
        return f"{nested.group(1)}.init_args.{nested.group(2)}"
    for pattern in (r"does not accept option '([^']+)'", r"unrecognized arguments: --([^\s=]+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def explain_config_error(message: str, argv: Sequence[str]) -> ConfigError:
    """One line for an error of Lightning's argument parser: which key, where (``located``),
    what to do."""
    command = argv[0] if argv else "fit"
    key = _unknown_key(message)
    if key and not renamed_key(key):  # a file given to a group in the flat layout's way
        parent = key.rpartition(".")[0]
        if renamed_key(parent) and _value_for_group(parent, argv):
            key = parent
    if key and renamed_key(key):
        return ConfigError(f"{key} is now {renamed_key(key)} ({_source(key, argv)})", True)
    if key:
        where = _source(key, argv)
        return ConfigError(
            f"unknown key {key} {where}{_did_you_mean(key, argv)} (see ssal {command} --help)", True
        )
    bad = re.search(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if bad:
        key, detail = bad.group(1), bad.group(2)
        if key == "config":
            text = squeeze(detail)
            return ConfigError(text.replace("File does not exist", "config file not found"))
        if renamed_key(key) and "Unable to load config" in detail:  # a value, not a group
            return ConfigError(f"{key} is now {renamed_key(key)} ({_source(key, argv)})", True)
        return ConfigError(f"{key} {_source(key, argv)}: {plain_validation_error(detail)}", True)
    return ConfigError(plain_validation_error(message))


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "NoneType": "null",
    "dict": "a mapping",
    "list": "a list",
    "tuple": "a list",
}


def _expected(found: Sequence[str]) -> str:
    """What jsonargparse's "Expected a ..." lines ask for, in words: the allowed values of
    its literals merged into one list, then the types."""
    values: list[str] = []
    types: list[str] = []
    for text in found:
        if text.startswith("typing.Literal["):
            values += [v.strip().strip("'") for v in text[len("typing.Literal[") : -1].split(",")]
        else:
            name = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>$", r"\1", text)
            types.append(_TYPE_WORDS.get(name, name))
    words = [f"one of {', '.join(dict.fromkeys(values))}"] if values else []
    return " or ".join(words + list(dict.fromkeys(types)))


_EXPECTED = re.compile(r"Expected a (<class '[\w.]+'>|typing\.Literal\[.*?\])(?:\.|\n|$)")


def plain_validation_error(detail: str) -> str:
    """jsonargparse's account of a value that does not fit, in one short line: the reason a
    class gave (``batch_size ... must be >= 1``), or what was expected and what was given."""
    errors = re.findall(r"^\s*- (.+)$", detail, re.M)
    reasons = [e.strip() for e in errors if not e.strip().startswith("Expected a ")]
    if reasons:
        return squeeze(reasons[0])[:300]
    expected = _EXPECTED.findall(detail)
    given = re.search(r"(?:Given|Got) value: (.*)", detail)
    if expected:
        got = f", got {given.group(1).strip()[:80]!r}" if given else ""
        return f"expected {_expected(expected)}{got}"
    return squeeze(detail)[:300]
