"""``ssal demo``: the whole method on Fashion-MNIST, offline, in minutes on two CPU cores.

1. train a small baseline CNN; 2. group the 10 classes from its confusion on the held-out
split (2, 3 and 5 groups, *group similar*); 3. train the same CNN with SSAL branches; 4. pick
alpha on the held-out split; 5. report baseline, +TR and +JP on the full test set, and the
agreement figures (accuracy where all heads agree, share of such images).
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.args import GroupingArgs, NetworkArgs, grouped_args
from ssal.backbones import get_entry
from ssal.checkpoint import set_checkpoint_alpha
from ssal.data.in_memory import InMemoryDataModule
from ssal.errors import UserError
from ssal.evaluate import Track, evaluate_runs, groupings_from_model
from ssal.files import write_json
from ssal.grouping import save_groupings
from ssal.report import save_report
from ssal.train import SSALModule
from ssal.trainer import build_trainer

__all__ = ["DEMO_MODEL", "run_demo"]

DEMO_MODEL = "small-cnn"  # its registry entry holds the recipe (the Fashion-MNIST configs too)
DEMO_DATA = {  # the demo's data settings; configs/fashion-mnist/small-cnn_*.yaml spell them out
    "dataset": "fashion-mnist",
    "eval_batch_size": 1000,
    "heldout": 0.1,
    "max_shift": 2,
    "flip": True,
}


def _train(
    module: SSALModule, dm: InMemoryDataModule, out: Path, epochs: int, quiet: bool
) -> tuple[Path, float]:
    """Train ``module`` into the run folder ``out``; its checkpoint and the seconds it took."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = ModelCheckpoint(
        dirpath=out,
        filename="model",
        save_last=False,
        save_top_k=1,
        monitor=None,
        enable_version_counter=False,
    )
    trainer = build_trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=[
            CSVLogger(out, name="logs", version=""),
            TensorBoardLogger(out, name="logs", version=""),
        ],
        callbacks=[ckpt],
        enable_model_summary=False,
        enable_progress_bar=not quiet,
        num_sanity_val_steps=0,
        log_every_n_steps=20,  # fewer where an epoch has too few steps for two rows
        deterministic=False,
    )
    with warnings.catch_warnings():  # the run folder holds its logs/ beside model.ckpt
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        trainer.fit(module, dm)
    path = Path(ckpt.best_model_path or ckpt.last_model_path or out / "model.ckpt")
    return path, time.perf_counter() - start


CHANCE_MARGIN = 1.5  # a baseline below 1.5x chance has learnt next to nothing yet


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an earlier demo (its checkpoints, logs and report) unless asked."""
    earlier = [p for p in ("summary.json", "baseline", "ssal") if (out / p).exists()]
    if not earlier:
        return
    if not overwrite:
        raise UserError(
            f"{out} holds an earlier demo ({', '.join(earlier)}); give another --out, or "
            "--overwrite to replace it"
        )
    for name in ("baseline", "ssal"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("summary.json", "groupings.json", "report.html"):
        (out / name).unlink(missing_ok=True)


def _datamodule(
    data_dir: str | None, seed: int, batch_size: int, train_size: int | None
) -> InMemoryDataModule:
    dm = InMemoryDataModule(
        data_dir=data_dir, batch_size=batch_size, seed=seed, train_size=train_size, **DEMO_DATA
    )
    dm.setup("fit")
    return dm


def _near_chance(accuracy: float, num_classes: int) -> str | None:
    """A warning when the baseline is so close to chance that comparisons mean nothing."""
    if accuracy >= CHANCE_MARGIN / num_classes:
        return None
    return (
        f"the baseline is near chance ({100 * accuracy:.2f}%, chance {100 / num_classes:.0f}% "
        f"for {num_classes} classes): train longer (--epochs) or on more images "
        "(--train-size); differences between the models mean nothing yet"
    )


def _baseline_and_groupings(
    dm: InMemoryDataModule,
    out: Path,
    epochs: int,
    seed: int,
    quiet: bool,
    device: str,
    say: Any,
    track: Track | None,
) -> tuple[SSALModule, Path, float, list, Path]:
    """Steps 1 and 2: the baseline, and the groupings of its held-out confusion."""
    entry = get_entry(DEMO_MODEL)
    say(f"[1/4] training the baseline ({DEMO_MODEL}, {_epochs(epochs)})")
    base = SSALModule(NetworkArgs(DEMO_MODEL), 10, 1, **grouped_args(entry.recipe))
    base_ckpt, base_time = _train(base, dm, out / "baseline", epochs, quiet)
    say("[2/4] grouping the classes from the baseline's held-out confusion")
    groupings, _ = groupings_from_model(
        base.net, dm, entry.paper.groups, "similar", seed=seed, device=device, track=track
    )
    path = save_groupings(out / "groupings.json", groupings, dm.class_names)
    for g in groupings:
        groups = [" + ".join(dm.class_names[c] for c in g.members(k)) for k in range(g.num_groups)]
        say(f"      {g.name}: " + " | ".join(groups))
    return base, base_ckpt, base_time, groupings, path


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int = 2,
    train_size: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 128,
    quiet: bool = False,
    log: Any = None,
    track: Track | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo; write checkpoints, groupings, logs, ``summary.json`` and ``report.html``
    under ``out``. ``log`` receives one line per step; ``track`` shows evaluation progress."""
    say = log or (lambda *a: None)
    out = Path(out)
    _prepare_out(out, overwrite)
    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    dm = _datamodule(data_dir, seed, batch_size, train_size)
    n_train, n_held = len(dm.train_arrays), len(dm.heldout_arrays)
    say(f"Fashion-MNIST: {n_train} training, {n_held} held-out, {len(dm.test_arrays)} test images")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    track = None if quiet else track
    _, base_ckpt, base_time, groupings, groupings_path = _baseline_and_groupings(
        dm, out, epochs, seed, quiet, device, say, track
    )
    say(f"[3/4] training the same network with SSAL branches ({_epochs(epochs)})")
    L.seed_everything(seed, verbose=False)
    recipe = grouped_args(get_entry(DEMO_MODEL).recipe)
    model = SSALModule(NetworkArgs(DEMO_MODEL), 10, 1, GroupingArgs(groupings), **recipe)
    ssal_ckpt, ssal_time = _train(model, dm, out / "ssal", epochs, quiet)
    say("[4/4] choosing alpha on the held-out split, evaluating on the test set")
    # one evaluation of each split serves the summary and the report alike
    base_run, ssal_run = evaluate_runs(
        [out / "baseline", out / "ssal"], lambda card: dm, device=device, track=track
    )
    set_checkpoint_alpha(ssal_ckpt, ssal_run.alpha, ssal_run.alpha_source)  # evaluate/predict
    test, heldout = ssal_run.test, ssal_run.heldout
    assert heldout is not None  # an SSAL run chooses alpha on its held-out split
    summary = {
        "baseline_accuracy": base_run.test["fine_accuracy"],
        "tr_accuracy": test["fine_accuracy"],
        "jp_accuracy": test["joint_accuracy"],
        "alpha": ssal_run.alpha,
        "alpha_chosen_on": ssal_run.alpha_source,
        "heldout_joint_accuracy_by_alpha": heldout["joint_accuracy_by_alpha"],
        "branch_accuracy": test["branch_accuracy"],
        "set_aside": test["set_aside"],
        "groupings": str(groupings_path),
        "groupings_detail": [g.to_dict() for g in groupings],
        "baseline_checkpoint": str(base_ckpt),
        "ssal_checkpoint": str(ssal_ckpt),
        "epochs": epochs,
        "train_size": n_train,
        "test_size": test["num_samples"],
        "seed": seed,
        "device": device,
        "baseline_train_seconds": round(base_time, 1),
        "ssal_train_seconds": round(ssal_time, 1),
        "warnings": [
            w for w in (_near_chance(base_run.test["fine_accuracy"], 10), *ssal_run.warnings) if w
        ],
    }
    say(f"writing {out / 'report.html'}: plots and the paper's analysis, side by side")
    report, _ = save_report([base_run, ssal_run], out / "report.html")
    summary["report"] = str(report)
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary)
    return summary
