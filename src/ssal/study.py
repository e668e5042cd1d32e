"""``ssal study``: several configs over several seeds, with the gain and its uncertainty.

Each run is ``ssal fit`` then ``ssal evaluate --tune-alpha`` in its own process, in
``OUT/<config>/seed<S>/``; a run whose ``eval.json`` exists is finished and never redone, so a
stopped study resumes where it stopped. ``study.json``, rewritten after every finished run,
holds per config +TR and +JP accuracy as mean ± std over seeds, the test accuracy per epoch,
the epochs needed to reach the baseline's final accuracy, and per pair of configs the paired
difference over seeds with a 95% confidence interval from Student's t distribution.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssal.checkpoint import CHECKPOINT_KEY, read_checkpoint
from ssal.files import write_json
from ssal.runs import checkpoint_in, metrics_in, val_curve

__all__ = ["StudyRun", "paired_difference", "plan_runs", "run_study", "summarize", "t_quantile"]

# Student's t, 97.5% quantile, for 1..30 degrees of freedom.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1) and count."""
    v = np.asarray(values, dtype=float)
    std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": std, "n": len(v)}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """``b - a`` over the seeds both have: mean, std, 95% t-interval, seeds used."""
    seeds = sorted(set(a) & set(b))
    d = np.array([b[s] - a[s] for s in seeds], dtype=float)
    out: dict[str, Any] = {"seeds": seeds, "n": len(seeds), "method": "paired t, 95%"}
    if not len(d):
        return out | {"mean": float("nan"), "std": float("nan"), "ci95": [None, None]}
    mean = float(d.mean())
    if len(d) < 2:
        return out | {"mean": mean, "std": float("nan"), "ci95": [None, None]}
    std = float(d.std(ddof=1))
    half = t_quantile(len(d) - 1) * std / math.sqrt(len(d))
    return out | {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


@dataclass(frozen=True)
class StudyRun:
    """One config at one seed: where it lives and how to run it."""

    name: str
    config: str
    seed: int
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def folder(self, out: Path) -> Path:
        return out / self.name / f"seed{self.seed}"


def plan_runs(
    configs: Sequence[str],
    seeds: Sequence[int],
    names: Sequence[str] | None = None,
    grid: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> list[StudyRun]:
    """Runs for every config (x every grid value) x seed, seed-major so pairs finish early.

    ``grid`` entries read ``KEY=V1,V2`` (a Lightning CLI key, e.g. ``model.auto_mode``); each
    value makes a variant named ``<config>-<key tail>=<value>``.
    """
    names = list(names) if names else [Path(c).stem for c in configs]
    if len(names) != len(configs) or len(set(names)) != len(names):
        raise ValueError("give one distinct name per config")
    variants: list[tuple[str, str, tuple[str, ...]]] = [
        (n, c, ()) for n, c in zip(names, configs, strict=True)
    ]
    for item in grid:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ValueError(f"grid entry {item!r} must read KEY=V1,V2")
        tail = key.rsplit(".", 1)[-1]
        variants = [
            (f"{n}-{tail}={v}", c, (*o, f"--{key}={v}"))
            for n, c, o in variants
            for v in values.split(",")
        ]
    for _, c, _ in variants:
        if not Path(c).is_file():
            raise FileNotFoundError(f"config not found: {c}")
    return [StudyRun(n, c, s, (*o, *overrides)) for s in seeds for n, c, o in variants]


def _fit_dir(run_dir: Path) -> Path:
    return run_dir / "ssal" / "fit"


def _checkpoint(run_dir: Path) -> Path:
    return checkpoint_in(_fit_dir(run_dir)) or _fit_dir(run_dir) / "checkpoints" / "last.ckpt"


def execute(run: StudyRun, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train and evaluate one run in subprocesses; returns its evaluation."""
    folder = run.folder(out)
    if folder.exists():  # an unfinished run: start it again from scratch
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cli = [sys.executable, "-m", "ssal.cli"]
    fit = [
        *cli,
        "fit",
        "--config",
        run.config,
        "--seed_everything",
        str(run.seed),
        "--trainer.logger",
        "ssal.loggers.ResumableCSVLogger",
        "--trainer.logger.save_dir",
        str(folder),
        "--trainer.logger.name",
        "ssal",
        "--trainer.logger.version",
        "fit",
        "--trainer.enable_progress_bar",
        "false",
        *run.overrides,
    ]
    log = folder / "log.txt"
    with open(log, "w") as f:
        start = time.perf_counter()
        code = subprocess.call(fit, stdout=f, stderr=subprocess.STDOUT, env=env)
        if code != 0:
            raise RuntimeError(f"run {run.name} seed {run.seed} failed; see {log}")
        ev = [
            *cli,
            "evaluate",
            "--checkpoint",
            str(_checkpoint(folder)),
            "--json",
            str(folder / "eval.tmp.json"),
        ]
        if run_has_branches(folder):
            ev.append("--tune-alpha")
        if subprocess.call(ev, stdout=f, stderr=subprocess.STDOUT, env=env) != 0:
            raise RuntimeError(f"evaluation of {run.name} seed {run.seed} failed; see {log}")
    import json

    result = json.loads((folder / "eval.tmp.json").read_text())
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["curve"] = val_curve(metrics_in(_fit_dir(folder)))
    write_json(folder / "eval.json", result)  # written last: marks the run finished
    (folder / "eval.tmp.json").unlink()
    return result


def run_has_branches(folder: Path) -> bool:
    """Whether the run's checkpoint has SSAL branches (alpha is tuned only then)."""
    return bool(read_checkpoint(_checkpoint(folder))[CHECKPOINT_KEY]["groupings"])


def load_results(runs: Sequence[StudyRun], out: Path) -> dict[tuple[str, int], dict]:
    import json

    done = {}
    for r in runs:
        path = r.folder(out) / "eval.json"
        if path.is_file():
            done[(r.name, r.seed)] = json.loads(path.read_text())
    return done


def epochs_to_reach(curve: Sequence[float], target: float) -> int | None:
    """1-based number of epochs until the curve first reaches ``target`` (None: never)."""
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1
    return None


def summarize(
    results: dict[tuple[str, int], dict], names: Sequence[str], baseline: str | None = None
) -> dict[str, Any]:
    """Per config mean ± std over seeds, convergence, and paired differences between configs."""
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the configs {list(names)}")
    configs: dict[str, Any] = {}
    fine: dict[str, dict[int, float]] = {}
    joint: dict[str, dict[int, float]] = {}
    for name in names:
        seeds = sorted(s for n, s in results if n == name)
        fine[name] = {s: results[(name, s)]["fine_accuracy"] for s in seeds}
        joint[name] = {s: results[(name, s)]["joint_accuracy"] for s in seeds}
        curves = [results[(name, s)].get("curve", []) for s in seeds]
        configs[name] = {
            "seeds": seeds,
            "has_branches": any(results[(name, s)].get("branch_accuracy") for s in seeds),
            "fine_accuracy": mean_std(list(fine[name].values())),
            "joint_accuracy": mean_std(list(joint[name].values())),
            "per_seed": {"fine": list(fine[name].values()), "joint": list(joint[name].values())},
            "seconds": mean_std([results[(name, s)].get("seconds", math.nan) for s in seeds]),
            "alpha": [results[(name, s)]["alpha"] for s in seeds],
            "curve_mean": [float(np.mean(c)) for c in zip(*curves, strict=False)] if curves else [],
            "curves": curves,
        }
    target = configs.get(baseline, {}).get("fine_accuracy", {}).get("mean")
    if target is not None and not math.isnan(target):
        for name in names:
            curves = configs[name]["curves"]
            reach = [epochs_to_reach(c, target) if c else None for c in curves]
            got = [r for r in reach if r is not None]
            configs[name]["epochs_to_baseline_final"] = {
                "per_seed": reach,
                **mean_std(got),
                "never_reached": sum(
                    1 for c, r in zip(curves, reach, strict=True) if c and r is None
                ),
                "no_curve": sum(1 for c in curves if not c),
            }
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "fine_difference": paired_difference(fine[a], fine[b]),
                    "joint_difference": paired_difference(joint[a], joint[b]),
                    "joint_vs_a_fine": paired_difference(fine[a], joint[b]),
                }
            )
    vs_baseline = {
        name: {
            "fine_difference": paired_difference(fine[baseline], fine[name]),
            "joint_difference": paired_difference(fine[baseline], joint[name]),
        }
        for name in names
        if name != baseline and baseline in fine
    }
    return {
        "baseline": baseline,
        "baseline_final_accuracy": target,
        "configs": configs,
        "vs_baseline": vs_baseline,
        "pairs": pairs,
        "interval": "95% paired t-interval over seeds (Student's t)",
    }


def run_study(
    runs: Sequence[StudyRun],
    out: str | Path,
    devices: int = 0,
    baseline: str | None = None,
    max_runs: int | None = None,
    parallel: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run what is not finished, then summarize.

    ``parallel`` runs at a time (default: one per device), spread round-robin over ``devices``
    GPUs; small models can share one GPU (``devices=1, parallel=3``).
    """
    names = list(dict.fromkeys(r.name for r in runs))
    if baseline is not None and baseline not in names:
        raise ValueError(f"--baseline {baseline!r} is not one of the configs {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = load_results(runs, out)
    todo = [r for r in runs if (r.name, r.seed) not in done]
    if max_runs is not None:
        todo = todo[:max_runs]
    log(f"{len(done)} of {len(runs)} runs finished; running {len(todo)}")

    lock = threading.Lock()

    def write_summary() -> dict[str, Any]:
        with lock:  # after every finished run, so a running study can be reported
            results = load_results(runs, out)
            summary = summarize(results, names, baseline)
            summary["finished_runs"] = len(results)
            summary["planned_runs"] = len(runs)
            write_json(out / "study.json", summary)
            return summary

    def one(item: tuple[int, StudyRun]) -> None:
        k, r = item
        env = dict(os.environ)
        if devices > 0:
            env["CUDA_VISIBLE_DEVICES"] = str(k % devices)
        log(f"run {r.name} seed {r.seed}")
        res = execute(r, out, env)
        log(
            f"  {r.name} seed {r.seed}: +TR {res['fine_accuracy']:.4f}  "
            f"+JP {res['joint_accuracy']:.4f}  ({res['seconds']:.0f} s)"
        )
        write_summary()

    workers = parallel or max(1, devices)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, enumerate(todo)))
    else:
        for item in enumerate(todo):
            one(item)
    return write_summary()
