"""On the GPU machine (no network): install from ``.whl`` only what its PyTorch image lacks.

Reads ``.whl/closure.json`` (written by ``benchmarks/prepare_device.sh``): ssal's direct
requirements and, per dependency, the version fetched and its own requirements. A requirement
counts as met when the image has the distribution at a version its specifier accepts (and,
in turn, what that one requires); everything else is installed with ``pip --no-index
--no-deps`` from ``.whl`` into ``TARGET`` (default ``/tmp/ssal-site``), which the scripts put
first on ``PYTHONPATH``, so the image's own packages are never changed. Prints what it found
and did; exits 1 with one line when something needed is not in ``.whl``.
Usage: ``python3 benchmarks/device_setup.py [TARGET]``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement  # pip is always there

WHEELS = Path(".whl")
# PyTorch and what comes with it: the image's business, never replaced nor checked here
IMAGE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def applies(req: Requirement, extras: set[str]) -> bool:
    envs = [{"extra": e} for e in extras] or [{"extra": ""}]
    return req.marker is None or any(req.marker.evaluate(env) for env in envs)


def plan(closure: dict, direct: list[str]) -> tuple[dict[str, str], list[str]]:
    """What to install (name -> version from .whl) and what is missing from .whl too."""
    todo = [(Requirement(r), set()) for r in direct]
    todo = [(r, set(r.extras)) for r, _ in todo]
    install: dict[str, str] = {}
    missing: list[str] = []
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonical(req.name)
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        if IMAGE.match(name):
            continue
        have = installed(req.name)
        entry = closure.get(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            # the image's own: check what it needs in turn
            try:
                reqs = [Requirement(r) for r in metadata.requires(req.name) or []]
            except metadata.PackageNotFoundError:
                reqs = []
            todo += [(r, set(r.extras)) for r in reqs if applies(r, extras)]
            continue
        if entry is None:
            missing.append(f"{req} (have {have})")
            continue
        install[name] = entry["version"]
        todo += [(r, set(r.extras)) for r in map(Requirement, entry["requires"])]
    return install, missing


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ssal-site")
    doc = json.loads((WHEELS / "closure.json").read_text())
    print(
        f"python {sys.version.split()[0]}; torch {installed('torch')}, torchvision "
        f"{installed('torchvision')}, numpy {installed('numpy')}, pillow {installed('pillow')}, "
        f"lightning {installed('lightning')}"
    )
    install, missing = plan(doc["closure"], doc["direct"])
    # matplotlib and tensorboard (reports, TensorBoard logs) are left out on purpose
    harmless = set(doc.get("skipped", [])) - {"numpy", "pillow"}
    missing = [m for m in missing if canonical(Requirement(m.split(" (")[0]).name) not in harmless]
    if missing:
        print(f"not in the image and not in .whl: {', '.join(missing)}")
        return 1
    if not install:
        print("the image has everything ssal needs")
        return 0
    pins = [f"{n}=={v}" for n, v in sorted(install.items())]
    print(f"installing into {target}: {' '.join(pins)}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
           "--find-links", str(WHEELS), "--target", str(target), "--upgrade", *pins]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"pip failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
