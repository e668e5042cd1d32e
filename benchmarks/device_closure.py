"""What the GPU machine needs beyond its PyTorch image: ssal's dependencies, as installed here.

Run by ``benchmarks/prepare_device.sh`` in an environment where ssal works (the project's
``.venv``). Walks ssal's requirements through the installed distributions' metadata, without
descending into PyTorch (``torch``, ``torchvision``, ``triton``, NVIDIA and CUDA packages: the
image brings them, built for its driver), and writes ``.whl/closure.json``: per distribution
the installed version and its requirements (markers evaluated here, for this platform), plus
ssal's own requirements. ``benchmarks/device_setup.py`` reads it on the device.
Usage: ``python benchmarks/device_closure.py OUT_JSON [SKIP ...]``.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement  # pip is always there

IMAGE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(dist: str, extras: set[str]) -> list[Requirement]:
    """The requirements of an installed distribution that apply here with ``extras``."""
    out = []
    for raw in metadata.requires(dist) or []:
        req = Requirement(raw)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


def main() -> None:
    target, skip = Path(sys.argv[1]), {canonical(s) for s in sys.argv[2:]}
    direct = [r for r in requirements("ssal", set()) if not IMAGE.match(canonical(r.name))]
    closure: dict[str, dict] = {}
    todo = [(r, set(r.extras)) for r in direct]
    while todo:
        req, extras = todo.pop()
        name = canonical(req.name)
        if IMAGE.match(name) or name in skip:
            continue
        entry = closure.setdefault(name, {"extras": [], "requires": []})
        new = extras - set(entry["extras"])
        if "version" in entry and not new:
            continue
        entry["version"] = metadata.version(req.name)
        entry["extras"] = sorted(set(entry["extras"]) | extras)
        reqs = requirements(req.name, set(entry["extras"]))
        entry["requires"] = sorted({str(r) for r in reqs})
        todo.extend((r, set(r.extras)) for r in reqs)
    doc = {"direct": [str(r) for r in direct], "skipped": sorted(skip), "closure": closure}
    target.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for name, entry in sorted(closure.items()):
        print(f"{name}=={entry['version']}")


if __name__ == "__main__":
    main()
