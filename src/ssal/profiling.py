"""Where a training step's time goes: the most expensive kernels, and which are the branches'.

``ssal bench --profile`` records a few training steps of the SSAL model and of its bare
backbone with ``torch.profiler``. On a GPU the unit is the device kernel (its duration); on a
CPU, the operator's own (self) CPU time. Branches cannot be told from the backbone by a
kernel's name alone (the same cuDNN or Triton kernel serves both, and annotations do not
survive ``torch.compile`` nor reach the backward pass), so the split compares the two
profiles: per kernel, the time the SSAL step spends beyond what the bare backbone's step
spends on the same kernel is the branches'. A kernel the backbone never runs is all
branches'. Inductor numbers its kernels (``triton_poi_fused_relu_12``): the number is dropped
before comparing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["kernel_times", "profile_summary", "summary_table"]

_NUMBERED = re.compile(r"_\d+$")
_STEP = "ProfilerStep"
_OUTSIDE = "(outside operators)"


def _key(name: str) -> str:
    return _NUMBERED.sub("", name)


def kernel_times(events: Iterable[Any]) -> tuple[dict[str, float], int, float]:
    """Per kernel name (numbers dropped), its time in ms summed over the recorded steps; the
    number of steps; their mean wall time in ms (under the profiler).

    ``events``: ``torch.profiler`` function events. Device kernels (and copies) are counted
    when there are any. On a CPU, each ``aten::`` operator's self time, and the rest of the
    steps' wall time as ``(outside operators)``: Python, Lightning's loop, the optimizer's
    loop (annotations such as ``Optimizer.step`` enclose whole steps, so their self time is
    not the optimizer's).
    """
    events = list(events)
    steps = [e for e in events if e.name.startswith(_STEP)]
    wall_total = sum(e.time_range.elapsed_us() for e in steps) / 1000
    device = [e for e in events if "CPU" not in str(e.device_type)]
    times: Counter[str] = Counter()
    if device:
        for e in device:
            times[_key(e.name)] += e.time_range.elapsed_us() / 1000
    else:
        for e in events:
            if e.name.startswith("aten::"):
                times[e.name] += e.self_cpu_time_total / 1000
        times[_OUTSIDE] = max(0.0, wall_total - sum(times.values()))
    return dict(times), max(1, len(steps)), wall_total / max(1, len(steps))


def profile_summary(
    model: Iterable[Any], backbone: Iterable[Any] | None = None, top: int = 15
) -> dict[str, Any]:
    """The ``top`` most expensive kernels of one SSAL training step, each with its share of
    the step's kernel time and the part of it that is the branches' (against ``backbone``,
    the bare backbone's profile), and the totals."""
    t_model, n_model, wall = kernel_times(model)
    t_base, n_base, wall_base = kernel_times(backbone) if backbone is not None else ({}, 1, 0.0)
    per_step = {k: v / n_model for k, v in t_model.items()}
    base_step = {k: v / n_base for k, v in t_base.items()}
    total = sum(per_step.values())
    total_base = sum(base_step.values())
    branches = {k: max(0.0, v - base_step.get(k, 0.0)) for k, v in per_step.items()}
    rows = []
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(
            {
                "kernel": name,
                "ms_per_step": ms,
                "share_of_step": ms / total if total else 0.0,
                "backbone_ms_per_step": base_step.get(name, 0.0) if backbone is not None else None,
                "branch_ms_per_step": branches[name] if backbone is not None else None,
                "where": _where(name, ms, base_step) if backbone is not None else "-",
            }
        )
    out: dict[str, Any] = {
        "unit": "device kernels" if _on_device(model) else "operators' self CPU time",
        "steps": n_model,
        "kernel_ms_per_step": total,
        "step_wall_ms_profiled": wall,
        "top": rows,
        "top_share_of_step": sum(r["share_of_step"] for r in rows),
    }
    if backbone is not None:
        out["backbone_kernel_ms_per_step"] = total_base
        out["backbone_step_wall_ms_profiled"] = wall_base
        out["branch_ms_per_step"] = sum(branches.values())
        out["branch_share_of_kernel_time"] = sum(branches.values()) / total if total else 0.0
        out["branch_only_kernels"] = sum(1 for k in per_step if k not in base_step)
    return out


def _on_device(events: Iterable[Any]) -> bool:
    return any("CPU" not in str(e.device_type) for e in events)


def _where(name: str, ms: float, base_step: Mapping[str, float]) -> str:
    base = base_step.get(name, 0.0)
    if base == 0.0:
        return "branches"
    if ms <= 1.05 * base:
        return "backbone"
    return f"both ({100 * (ms - base) / ms:.0f}% branches)"


def summary_table(summary: Mapping[str, Any], title: str = "") -> str:
    """The summary as a fixed-width text table (``kernels.txt`` beside the traces)."""
    lines = [title] if title else []
    lines.append(
        f"{summary['unit']}: {summary['kernel_ms_per_step']:.2f} ms per training step "
        f"({summary['steps']} steps profiled; wall {summary['step_wall_ms_profiled']:.2f} ms "
        "per step under the profiler)"
    )
    if "branch_share_of_kernel_time" in summary:
        lines.append(
            f"bare backbone: {summary['backbone_kernel_ms_per_step']:.2f} ms; branches: "
            f"{summary['branch_ms_per_step']:.2f} ms = "
            f"{100 * summary['branch_share_of_kernel_time']:.1f}% of the SSAL step's time; "
            f"{summary['branch_only_kernels']} kernels only the branches run"
        )
    lines.append(f"{'ms/step':>9} {'share':>6} {'backbone':>9}  {'where':<22} kernel")
    for r in summary["top"]:
        base = r["backbone_ms_per_step"]
        lines.append(
            f"{r['ms_per_step']:9.3f} {100 * r['share_of_step']:5.1f}% "
            f"{'-' if base is None else f'{base:9.3f}':>9}  {r['where']:<22} {r['kernel'][:110]}"
        )
    lines.append(
        f"top {len(summary['top'])}: {100 * summary['top_share_of_step']:.1f}% of the step's time"
    )
    return "\n".join(lines) + "\n"
