"""``ssal study``: several configs over several seeds, with the gain and its uncertainty.

Each run is ``ssal fit`` then ``ssal evaluate --tune-alpha`` in its own process, in
``OUT/<config>/seed<S>/``; a run whose ``eval.json`` exists is finished and never redone, so a
stopped study resumes where it stopped. ``study.json``, rewritten after every finished run,
holds every finished run's record (``runs``: final and per-epoch accuracies, alpha, seed,
config, device) and, computed from them, per config +TR and +JP accuracy as mean ± std over
seeds, the epochs each seed needs to reach the same seed's baseline final accuracy, and per
pair of configs the paired difference over seeds with a 95% confidence interval from
Student's t distribution.

A study spans machines and sessions: ``study.json`` alone, in a fresh ``OUT``, stands for its
finished runs (only the missing ones are run), and a time budget stops a study cleanly
between runs. A record made with another config file or other options than the planned run
is refused (its ``fingerprint`` differs), so one summary never mixes two settings.
"""

from __future__ import annotations

import hashlib
import json
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

from ssal.checkpoint import read_card
from ssal.errors import UserError
from ssal.files import write_json
from ssal.runs import checkpoint_in, metrics_in, val_curve

__all__ = [
    "CONVERGENCE_FRACTIONS",
    "StudyRun",
    "convergence",
    "paired_difference",
    "plan_runs",
    "read_records",
    "run_study",
    "summarize",
    "t_quantile",
]

# Convergence is measured at the baseline's final accuracy and at 99.5% of it.
CONVERGENCE_FRACTIONS = (1.0, 0.995)
# What a run record keeps of ``ssal evaluate``'s JSON (the rest stays in its folder).
_EVAL_KEYS = (
    "fine_accuracy",
    "joint_accuracy",
    "branch_accuracy",
    "alpha",
    "alpha_source",
    "num_samples",
    "set_aside",
)

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

    def fingerprint(self) -> str:
        """What makes two runs of a config comparable: the config file's text and the options
        (not its path, so a study moves between machines)."""
        h = hashlib.sha256(Path(self.config).read_bytes())
        h.update("\0".join(self.overrides).encode())
        return h.hexdigest()[:16]


def plan_runs(
    configs: Sequence[str],
    seeds: Sequence[int],
    names: Sequence[str] | None = None,
    grid: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> list[StudyRun]:
    """Runs for every config (x every grid value) x seed, seed-major so pairs finish early:
    seed 0 of every config first, then seed 1, ...

    ``grid`` entries read ``KEY=V1,V2`` (a Lightning CLI key, e.g.
    ``model.groupings.auto_mode``); each value makes a variant named
    ``<config>-<key tail>=<value>``.
    """
    names = list(names) if names else [Path(c).stem for c in configs]
    if len(names) != len(configs) or len(set(names)) != len(names):
        raise UserError("give one distinct name per config")
    variants: list[tuple[str, str, tuple[str, ...]]] = [
        (n, c, ()) for n, c in zip(names, configs, strict=True)
    ]
    for item in grid:
        key, _, values = item.partition("=")
        if not key or not values:
            raise UserError(f"grid entry {item!r} must read KEY=V1,V2")
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


_now = time.monotonic  # the budget's clock (tests replace it)


class OutOfTime(Exception):
    """A run was stopped because the study's time budget ran out."""


def _call(cmd: list[str], log: Any, env: dict[str, str] | None, deadline: float | None) -> int:
    """Run ``cmd``; past ``deadline`` (``time.monotonic``) it is killed and ``OutOfTime`` raised."""
    timeout = None if deadline is None else deadline - _now()
    if timeout is not None and timeout <= 0:
        raise OutOfTime
    try:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OutOfTime from None


def _fit_command(run: StudyRun, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ssal.cli",
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


def execute(
    run: StudyRun, out: Path, env: dict[str, str] | None = None, deadline: float | None = None
) -> dict[str, Any]:
    """Train and evaluate one run in subprocesses; returns its record (also ``eval.json``).

    ``deadline`` (``time.monotonic``): the run is killed when it passes (``OutOfTime``), and
    its folder, unfinished, is started again from scratch next time.
    """
    folder = run.folder(out)
    if folder.exists():  # an unfinished run: start it again from scratch
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log = folder / "log.txt"
    tmp = folder / "eval.tmp.json"
    with open(log, "w") as f:
        start = time.perf_counter()
        if _call(_fit_command(run, folder), f, env, deadline) != 0:
            raise RuntimeError(f"run {run.name} seed {run.seed} failed; see {log}")
        card = read_card(_checkpoint(folder))
        ev = [*_fit_command(run, folder)[:3], "evaluate", "--checkpoint", str(_checkpoint(folder))]
        ev += ["--json", str(tmp)] + (["--tune-alpha"] if card.groupings else [])
        if _call(ev, f, env, deadline) != 0:
            raise RuntimeError(f"evaluation of {run.name} seed {run.seed} failed; see {log}")
    evaluation = json.loads(tmp.read_text())
    metrics = metrics_in(_fit_dir(folder))
    curve = val_curve(metrics)
    record = {
        "name": run.name,
        "seed": run.seed,
        "config": run.config,
        "overrides": list(run.overrides),
        "fingerprint": run.fingerprint(),
        "device": _device_name(run, env),
        "epochs": len(curve),
        "seconds": round(time.perf_counter() - start, 1),
        **{k: evaluation.get(k) for k in _EVAL_KEYS},
        "has_branches": bool(card.groupings),
        "groupings": [g.to_dict() for g in card.groupings],
        "curve": curve,
        "curve_joint": val_curve(metrics, "val/acc_joint") if card.groupings else [],
    }
    write_json(folder / "eval.json", record)  # written last: marks the run finished
    tmp.unlink()
    return record


def _device_name(run: StudyRun, env: dict[str, str] | None) -> str:
    """The accelerator a run trained on, as torch names it (``cpu`` when none was used)."""
    import torch

    args = list(run.overrides)
    forced = [
        a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
        for i, a in enumerate(args)
        if a.split("=", 1)[0] == "--trainer.accelerator"
    ]
    try:
        import yaml

        trainer = (yaml.safe_load(Path(run.config).read_text()) or {}).get("trainer") or {}
    except (OSError, ValueError, AttributeError):
        trainer = {}
    accelerator = str(forced[-1] if forced else trainer.get("accelerator", "auto"))
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "cpu"
    visible = (env or {}).get("CUDA_VISIBLE_DEVICES")
    # the child numbers its visible devices from 0; this process sees them all
    index = int(visible.split(",")[0]) if visible and visible.split(",")[0].isdigit() else 0
    return torch.cuda.get_device_name(index)


def run_has_branches(folder: Path) -> bool:
    """Whether the run's checkpoint has SSAL branches (alpha is tuned only then)."""
    return bool(read_card(_checkpoint(folder)).groupings)


def read_records(path: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The finished runs a ``study.json`` (or a study folder holding one) records."""
    path = Path(path)
    file = path / "study.json" if path.is_dir() else path
    if not file.is_file():
        return {}
    try:
        summary = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: not a readable study.json ({exc})") from None
    if not isinstance(summary, dict):
        raise UserError(f"{file}: not a study.json written by ssal study")
    records = summary.get("runs")
    if not isinstance(records, list):
        raise UserError(f"{file}: no runs recorded; not a study.json written by ssal study")
    return {(r["name"], int(r["seed"])): r for r in records}


def load_results(
    runs: Sequence[StudyRun], out: Path, recorded: dict[tuple[str, int], dict] | None = None
) -> dict[tuple[str, int], dict]:
    """Finished runs of the plan: their ``eval.json`` in ``out``, else their record in
    ``recorded`` (an earlier ``study.json``). A record made with other settings is refused."""
    done = {}
    for r in runs:
        path = r.folder(out) / "eval.json"
        record = (
            json.loads(path.read_text())
            if path.is_file()
            else (recorded or {}).get((r.name, r.seed))
        )
        if record is None:
            continue
        made_with = record.get("fingerprint")
        if made_with is not None and made_with != r.fingerprint():
            raise UserError(
                f"{out}: run {r.name} seed {r.seed} was made with another config file or other "
                f"options than {r.config} {' '.join(r.overrides)}; study in another --out, or "
                "with the same settings"
            )
        done[(r.name, r.seed)] = record
    return done


def epochs_to_reach(curve: Sequence[float], target: float) -> int | None:
    """1-based number of epochs until the curve first reaches ``target`` (None: never)."""
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1
    return None


def convergence(
    curves: dict[int, Sequence[float]], targets: dict[int, float], fraction: float = 1.0
) -> dict[str, Any]:
    """Per seed, the epoch at which ``curves[seed]`` first reaches ``fraction`` of
    ``targets[seed]`` (the same seed's baseline final accuracy).

    A seed that never reaches it counts as its number of epochs + 1 (a lower bound: it would
    need at least one more epoch) in ``counted`` and in the mean; ``never_reached`` says how
    many did. Seeds without a curve or without a target are left out (``no_curve``).
    """
    seeds = sorted(s for s in curves if curves[s] and s in targets)
    reach = {s: epochs_to_reach(curves[s], fraction * targets[s]) for s in seeds}
    counted = {s: r if r is not None else len(curves[s]) + 1 for s, r in reach.items()}
    return {
        "fraction": fraction,
        "seeds": seeds,
        "per_seed": [reach[s] for s in seeds],
        "counted": [counted[s] for s in seeds],
        **mean_std(list(counted.values())),
        "never_reached": sum(1 for r in reach.values() if r is None),
        "no_curve": sum(1 for s in curves if s not in seeds),
    }


def _baseline_targets(results: dict[tuple[str, int], dict], baseline: str) -> dict[int, float]:
    """Per seed, the baseline's final test accuracy as its own curve measured it (its last
    epoch; so every baseline seed reaches its target), else its evaluated +TR."""
    targets = {}
    for (name, seed), r in results.items():
        if name == baseline:
            targets[seed] = r["curve"][-1] if r.get("curve") else r["fine_accuracy"]
    return targets


def _config_summary(results: dict[tuple[str, int], dict], name: str) -> dict[str, Any]:
    seeds = sorted(s for n, s in results if n == name)
    runs = [results[(name, s)] for s in seeds]
    fine = [r["fine_accuracy"] for r in runs]
    joint = [r["joint_accuracy"] for r in runs]
    curves = [r.get("curve") or [] for r in runs]
    return {
        "seeds": seeds,
        "has_branches": any(r.get("has_branches", bool(r.get("branch_accuracy"))) for r in runs),
        "fine_accuracy": mean_std(fine),
        "joint_accuracy": mean_std(joint),
        "per_seed": {"fine": fine, "joint": joint},
        "seconds": mean_std([r.get("seconds", math.nan) for r in runs]),
        "alpha": [r["alpha"] for r in runs],
        "devices": sorted({r["device"] for r in runs if r.get("device")}),
        "curve_mean": [float(np.mean(c)) for c in zip(*curves, strict=False)] if curves else [],
        "curves": curves,
    }


def _by_seed(summary: dict[str, Any], key: str = "counted") -> dict[int, float]:
    return dict(zip(summary["seeds"], summary[key], strict=True))


def summarize(
    results: dict[tuple[str, int], dict], names: Sequence[str], baseline: str | None = None
) -> dict[str, Any]:
    """Per config mean ± std over seeds, convergence, and paired differences between configs.

    Convergence, per seed pair: the epoch at which a config first reaches the same seed's
    baseline final accuracy (``epochs_to_baseline_final``) and 99.5% of it
    (``epochs_to_baseline_final_tolerance``); each config's paired difference in epochs from
    the baseline has a 95% interval like the accuracies.
    """
    baseline = baseline or names[0]
    if baseline not in names:
        raise UserError(f"baseline {baseline!r} is not one of the configs {list(names)}")
    configs = {name: _config_summary(results, name) for name in names}
    fine = {
        n: dict(zip(c["seeds"], c["per_seed"]["fine"], strict=True)) for n, c in configs.items()
    }
    joint = {
        n: dict(zip(c["seeds"], c["per_seed"]["joint"], strict=True)) for n, c in configs.items()
    }
    targets = _baseline_targets(results, baseline)
    keys = ("epochs_to_baseline_final", "epochs_to_baseline_final_tolerance")
    for c in configs.values():
        curves = dict(zip(c["seeds"], c["curves"], strict=True))
        for key, fraction in zip(keys, CONVERGENCE_FRACTIONS, strict=True):
            c[key] = convergence(curves, targets, fraction)
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
            **{
                f"{key}_difference": paired_difference(
                    _by_seed(configs[baseline][key]), _by_seed(configs[name][key])
                )
                for key in keys
            },
        }
        for name in names
        if name != baseline
    }
    target = configs[baseline]["fine_accuracy"]["mean"]
    return {
        "baseline": baseline,
        "baseline_final_accuracy": None if math.isnan(target) else target,
        "configs": configs,
        "vs_baseline": vs_baseline,
        "pairs": pairs,
        "interval": "95% paired t-interval over seeds (Student's t)",
        "convergence": {
            "fractions": list(CONVERGENCE_FRACTIONS),
            "target": "the same seed's baseline final test accuracy (its last epoch)",
            "never": "a seed that never reaches it counts as its epochs + 1 (a lower bound)",
        },
    }


def _expected_seconds(results: dict[tuple[str, int], dict], name: str) -> float:
    """How long a run of config ``name`` is likely to take: the mean of its finished runs,
    else the longest finished run of any config, else 0 (unknown)."""
    own = [r["seconds"] for (n, _), r in results.items() if n == name and r.get("seconds")]
    if own:
        return float(np.mean(own))
    return max((r["seconds"] for r in results.values() if r.get("seconds")), default=0.0)


def run_study(
    runs: Sequence[StudyRun],
    out: str | Path,
    devices: int = 0,
    baseline: str | None = None,
    max_runs: int | None = None,
    parallel: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    budget_minutes: float | None = None,
) -> dict[str, Any]:
    """Run what is not finished, then summarize.

    ``parallel`` runs at a time (default: one per device), spread round-robin over ``devices``
    GPUs; small models can share one GPU (``devices=1, parallel=3``). Finished runs are those
    with an ``eval.json`` in ``out`` or a record in ``out/study.json``. ``budget_minutes``: no
    run starts that is expected (from the finished runs' times) to end past the budget, and a
    run still going when it runs out is stopped and left for next time; ``stopped`` in the
    summary says what was left.
    """
    names = list(dict.fromkeys(r.name for r in runs))
    if baseline is not None and baseline not in names:
        raise UserError(f"--baseline {baseline!r} is not one of the configs {names}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = read_records(out)
    done = load_results(runs, out, recorded)
    todo = [r for r in runs if (r.name, r.seed) not in done]
    if max_runs is not None:
        todo = todo[:max_runs]
    log(f"{len(done)} of {len(runs)} runs finished; running {len(todo)}")
    deadline = None if budget_minutes is None else _now() + 60 * budget_minutes
    lock = threading.Lock()
    left: list[StudyRun] = []

    def write_summary() -> dict[str, Any]:
        with lock:  # after every finished run, so a running study can be reported
            return _write_summary(runs, out, recorded, names, baseline, left, budget_minutes)

    def one(item: tuple[int, StudyRun]) -> None:
        k, r = item
        if deadline is not None:
            with lock:
                expected = _expected_seconds(load_results(runs, out, recorded), r.name)
            if _now() + expected > deadline:
                log(f"run {r.name} seed {r.seed}: not started, the budget would run out")
                left.append(r)
                return
        env = dict(os.environ)
        if devices > 0:
            env["CUDA_VISIBLE_DEVICES"] = str(k % devices)
        log(f"run {r.name} seed {r.seed}")
        try:
            res = execute(r, out, env, deadline)
        except OutOfTime:
            log(f"  {r.name} seed {r.seed}: stopped, the budget ran out")
            left.append(r)
            return
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


def _write_summary(
    runs: Sequence[StudyRun],
    out: Path,
    recorded: dict[tuple[str, int], dict],
    names: Sequence[str],
    baseline: str | None,
    left: Sequence[StudyRun],
    budget_minutes: float | None,
) -> dict[str, Any]:
    """``study.json``: the summary of the finished runs, and their records (with any other
    runs an earlier ``study.json`` held, kept as they were)."""
    results = load_results(runs, out, recorded)
    summary = summarize(results, names, baseline)
    summary["finished_runs"] = len(results)
    summary["planned_runs"] = len(runs)
    if left:
        summary["stopped"] = {
            "reason": f"time budget of {budget_minutes:g} minutes",
            "runs_left": [f"{r.name} seed {r.seed}" for r in left],
        }
    order = {(r.name, r.seed): i for i, r in enumerate(runs)}
    kept = {**recorded, **results}
    summary["runs"] = [
        {
            "name": n,
            "seed": s,
            **{k: v for k, v in kept[(n, s)].items() if k not in ("name", "seed")},
        }
        for n, s in sorted(kept, key=lambda key: (order.get(key, len(order)), key))
    ]
    write_json(out / "study.json", summary)
    return summary
