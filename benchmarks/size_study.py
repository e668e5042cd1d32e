"""How many epochs fit one study run into the time a GPU session allows.

Reads the ``ssal bench`` JSON of the SSAL model of the study configs (same model, branch
layouts, batch, precision and compile as the runs; its bare backbone is the baseline) and
picks the largest number of epochs E for which the slowest config (SSAL: a probe of
``probe_epochs`` first, then E epochs) is expected to take at most ``target`` seconds:

    run(E) = overhead + probe_epochs * train_images / (bare img/s / eager)
             + E * (train_images / ssal train img/s + test_images / ssal eval img/s)

``overhead`` covers starting the processes, compiling (warm cache after the first run),
checkpoints and the evaluation afterwards (held-out and test split); ``eager`` is how much
slower the uncompiled probe trains. Both are estimates; every run's real time is recorded in
``study.json`` (``seconds``). Prints ``E`` on stdout and the reasoning on stderr.
Usage: ``python benchmarks/size_study.py BENCH_JSON [TARGET_S] [MIN_E] [MAX_E]``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

TRAIN_IMAGES = 54000  # Fashion-MNIST's 60,000 less the held-out tenth
TEST_IMAGES = 10000  # evaluated after every epoch (the curve)
OVERHEAD_S = 60.0
EAGER = 2.0
PROBE_EPOCHS = 3


def epochs(bench: dict, target: float, low: int, high: int) -> tuple[int, dict]:
    epoch_s = TRAIN_IMAGES / bench["train_images_per_s"] + TEST_IMAGES / bench["eval_images_per_s"]
    bare = bench.get("baseline_train_images_per_s") or bench["train_images_per_s"]
    probe_s = PROBE_EPOCHS * TRAIN_IMAGES / (bare / EAGER)
    fit = math.floor((target - OVERHEAD_S - probe_s) / epoch_s)
    chosen = max(low, min(high, fit))
    return chosen, {
        "epoch_s": epoch_s,
        "probe_s": probe_s,
        "overhead_s": OVERHEAD_S,
        "epochs_that_fit": fit,
        "epochs": chosen,
        "expected_ssal_run_s": OVERHEAD_S + probe_s + chosen * epoch_s,
        "expected_baseline_run_s": OVERHEAD_S
        + chosen * (TRAIN_IMAGES / bare + TEST_IMAGES / bench["eval_images_per_s"]),
    }


def main() -> None:
    bench = json.loads(Path(sys.argv[1]).read_text())
    target, low, high = (float(sys.argv[2]) if len(sys.argv) > 2 else 160.0), 15, 40
    if len(sys.argv) > 4:
        low, high = int(sys.argv[3]), int(sys.argv[4])
    chosen, why = epochs(bench, target, low, high)
    print(
        f"sizing on {bench['device']}: SSAL {bench['train_images_per_s']:.0f} img/s training, "
        f"{bench['eval_images_per_s']:.0f} img/s evaluation, bare backbone "
        f"{bench.get('baseline_train_images_per_s') or 0:.0f} img/s; one epoch "
        f"{why['epoch_s']:.1f} s, probe {why['probe_s']:.0f} s; {why['epochs_that_fit']} epochs "
        f"fit {target:.0f} s, chose {chosen} (bounds {low}-{high}): about "
        f"{why['expected_ssal_run_s']:.0f} s per SSAL run, "
        f"{why['expected_baseline_run_s']:.0f} s per baseline run",
        file=sys.stderr,
    )
    print(chosen)


if __name__ == "__main__":
    main()
