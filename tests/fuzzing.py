"""A seeded, dependency-free mutation fuzzer for ssal's readers of user files.

A reader is one ``Reader`` entry: how to write a valid input (files in a folder), how ssal
reads it, what a correct result satisfies, structure-aware mutations and crafted cases (huge
sizes, code-running payloads). ``run_case`` reads one mutated copy under guards (time, address
space, a marker file that payloads try to create) and checks the outcome: a correct result, or
one ``ValueError``/``FileNotFoundError`` line naming a file it was given (through the CLI: one
``ssal: error:`` line on stderr and exit code 2), and no new files left behind on error.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CI_CASES = 30
"""Cases per reader and mutation kind in an ordinary test run: the whole fuzz suite then takes
about 30 s on 2 cores, most of it writing the valid inputs (``--fuzz-cases N`` or
``SSAL_FUZZ_CASES=N`` asks for more; 500 take about 25 minutes)."""

TIME_LIMIT_S = 30.0
EXTRA_MEMORY = 3 * 2**30
"""Address space a case may add to the test process (``RLIMIT_AS``)."""

KINDS = ("truncate", "random", "bitflip", "sizes", "splice", "structure")
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**31, 2**40]


class CaseTimeout(BaseException):
    """A case ran past ``TIME_LIMIT_S`` (a BaseException: readers' ``except Exception`` keeps
    it)."""


@dataclass(frozen=True)
class Outcome:
    """What reading one case gave: a result, or the error (library) or exit code (CLI)."""

    result: Any = None
    error: BaseException | None = None
    code: int | None = None
    stderr: str = ""


@dataclass(frozen=True)
class Reader:
    """One reader of user files, as the fuzzer drives it."""

    name: str
    write: Callable[[Path], list[Path]]
    """Write a valid input into an empty folder; return the files mutations may target."""
    read: Callable[[Path], Any]
    """Read the folder as ssal does (library call: the result; ``cli``: the exit code)."""
    check: Callable[[Any], None] = lambda result: None
    """Assert what a correct result satisfies."""
    structure: Callable[[Path, bytes, np.random.Generator, str], bytes] | None = None
    """A structure-aware mutation (parse, change a value, write back) of one file's bytes;
    strings it plants may include the marker path."""
    crafted: Callable[[Path, str], list[tuple[str, str, bytes]]] = lambda folder, marker: []
    """Hand-made cases ``(label, file name, bytes)`` for this folder; payloads create
    ``marker``."""
    cli: bool = False
    weight: float = 1.0
    """Share of the case count this reader runs (slow readers run fewer)."""


def case_count(base: int, reader: Reader) -> int:
    return max(1, round(base * reader.weight))


# ----------------------------------------------------------------------------- mutations
def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One byte-level mutation of ``data``: truncated, random, bit flips, planted sizes or a
    spliced copy of one of its own chunks."""
    n = len(data)
    if kind == "truncate":
        return data[: int(rng.integers(0, max(n, 1)))]
    if kind == "random":
        size = int(rng.integers(0, min(max(2 * n, 16), 1 << 16)))
        keep = int(rng.integers(0, min(n, 64) + 1)) if rng.random() < 0.5 else 0
        return data[:keep] + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    out = bytearray(data)
    if not out:
        return bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, n))
            out[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "sizes":
        for _ in range(int(rng.integers(1, 4))):
            value = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            width = int(rng.choice([1, 2, 4, 8]))
            order = "big" if rng.random() < 0.5 else "little"
            raw = (value % (1 << (8 * width))).to_bytes(width, order)
            i = int(rng.integers(0, max(n - width, 0) + 1))
            out[i : i + width] = raw
    elif kind == "splice":
        a, b = sorted(int(v) for v in rng.integers(0, n + 1, 2))
        at = int(rng.integers(0, n + 1))
        out[at:at] = data[a:b] * int(rng.integers(1, 4))
    return bytes(out)


def random_value(rng: np.random.Generator, marker: str) -> Any:
    """A value of a random type, to plant where a reader expects something else."""
    pool: list[Any] = [
        None,
        True,
        -1,
        0,
        7,
        2**31,
        2**63,
        -(2**40),
        1e308,
        float("nan"),
        0.5,
        "",
        "x",
        "ab" * 50,
        "../../etc/passwd",
        f"pipe:touch {marker}",
        "/dev/zero",
        [],
        [0],
        [0, 1, 2**40],
        ["a", None],
        [[0, 1]],
        {},
        {"a": 1},
        {"assignment": [0, 1]},
    ]
    return pool[int(rng.integers(0, len(pool)))]


def mutate_tree(doc: Any, rng: np.random.Generator, marker: str) -> Any:
    """Replace, delete or wrap one randomly chosen node of a JSON-like tree (in place where
    possible; returns the new root)."""
    path: list[tuple[Any, Any]] = []
    node = doc
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict) else None
        if isinstance(node, list):
            key = int(rng.integers(0, len(node)))
        path.append((node, key))
        node = node[key]
    if not path:
        return random_value(rng, marker)
    parent, key = path[-1]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.3:
        parent[key] = [node] if rng.random() < 0.5 else {"x": node}
    else:
        parent[key] = random_value(rng, marker)
    return doc


# ----------------------------------------------------------------------------- guards
def _address_space() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def bounded(seconds: float = TIME_LIMIT_S, extra_memory: int = EXTRA_MEMORY) -> Iterator[None]:
    """Run the body with a time limit and at most ``extra_memory`` more address space."""

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = _address_space()
    if size is not None:
        limit = size + extra_memory
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def read_guarded(reader: Reader, folder: Path, capsys: Any) -> tuple[Outcome, float]:
    """Read ``folder`` with ``reader`` under ``bounded``; returns the outcome and seconds."""
    start = time.perf_counter()
    with bounded():
        if reader.cli:
            capsys.readouterr()
            code = reader.read(folder)
            captured = capsys.readouterr()
            outcome = Outcome(code=code, stderr=captured.err)
        else:
            try:
                outcome = Outcome(result=reader.read(folder))
            except (ValueError, FileNotFoundError) as e:
                outcome = Outcome(error=e)
    return outcome, time.perf_counter() - start


def check_outcome(
    reader: Reader, outcome: Outcome, folder: Path, before: set[Path], label: str
) -> None:
    """A correct result, or one line naming a file of the folder and nothing left behind."""
    names = {p.name for p in before} | {str(folder)}
    if reader.cli:
        if outcome.code == 0:
            reader.check(folder)
            return
        lines = outcome.stderr.strip().splitlines()
        assert outcome.code == 2, f"{label}: exit code {outcome.code}: {outcome.stderr[-2000:]}"
        assert len(lines) == 1 and lines[0].startswith("ssal: error: "), f"{label}: {lines[:5]}"
        message = lines[0]
    elif outcome.error is None:
        reader.check(outcome.result)
        return
    else:
        message = str(outcome.error)
        assert "\n" not in message, f"{label}: message of several lines: {message[:2000]}"
    assert any(n in message for n in names), f"{label}: names no file it read: {message}"
    assert len(message) < 2000, f"{label}: a message of {len(message)} characters"
    left = _files(folder) - before
    assert not left, f"{label}: left files behind after an error: {sorted(map(str, left))}"


def run_case(
    reader: Reader,
    pristine: Path,
    folder: Path,
    target: str,
    data: bytes,
    marker: Path,
    capsys: Any,
    label: str,
) -> None:
    """Copy ``pristine`` to ``folder``, write ``data`` to ``target`` in it, read and check."""
    shutil.copytree(pristine, folder)
    (folder / target).write_bytes(data)
    before = _files(folder)
    try:
        outcome, seconds = read_guarded(reader, folder, capsys)
    except CaseTimeout:
        raise AssertionError(f"{label}: ran past {TIME_LIMIT_S} s") from None
    except BaseException as e:  # everything else is a reader bug: show where it came from
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = "".join(traceback.format_exception(e)[-6:])
        raise AssertionError(f"{label}: {type(e).__name__} escaped the reader:\n{tb}") from None
    finally:
        assert not marker.exists(), f"{label}: the payload ran (marker file created)"
    assert seconds < TIME_LIMIT_S, f"{label}: took {seconds:.1f} s"
    if os.environ.get("SSAL_FUZZ_VERBOSE"):  # what each case gave, for a person reading along
        said = outcome.error or outcome.stderr.strip()
        said = said or (f"exit {outcome.code}" if reader.cli else "a result")
        print(f"{label} ({seconds:.2f} s): {str(said)[:300]}", file=sys.__stdout__)
    check_outcome(reader, outcome, folder, before, label)
    shutil.rmtree(folder, ignore_errors=True)


def fuzz_cases(config: Any) -> int:
    """Cases per reader and mutation kind: ``--fuzz-cases``, else ``SSAL_FUZZ_CASES``."""
    option = config.getoption("--fuzz-cases", default=None)
    return int(option or os.environ.get("SSAL_FUZZ_CASES") or CI_CASES)
