"""``ssal demo``: the whole method on Fashion-MNIST, offline, in minutes on two CPU cores.

1. train a small baseline CNN; 2. group the 10 classes from its confusion on the held-out
split (2, 3 and 5 groups, *group similar*); 3. train the same CNN with SSAL branches; 4. pick
alpha on the held-out split; 5. report baseline, +TR and +JP on the full test set, and the
agreement figures (accuracy where all heads agree, share of such images).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssal.data import InMemoryDataModule
from ssal.evaluate import evaluate_model, heldout_confusion
from ssal.files import write_json
from ssal.grouping import Grouping, save_groupings
from ssal.loggers import use_loss_progress_bar
from ssal.report import write_report
from ssal.train import SSALModule, set_checkpoint_alpha

__all__ = ["DEMO_RECIPE", "run_demo"]

DEMO_RECIPE: dict[str, Any] = {
    "model": "small-cnn",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "schedule_interval": "step",
    "channels_last": True,  # measured faster on two CPU cores for this network (benchmarks/)
}
DEMO_GROUPS = (2, 3, 5)


def _train(module: SSALModule, dm: InMemoryDataModule, out: Path, epochs: int, quiet: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ckpt = ModelCheckpoint(
        dirpath=out,
        filename="model",
        save_last=False,
        save_top_k=1,
        monitor=None,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
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
        log_every_n_steps=20,
        deterministic=False,
    )
    use_loss_progress_bar(trainer)
    with warnings.catch_warnings():  # the run folder holds its logs/ beside model.ckpt
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        trainer.fit(module, dm)
    return Path(ckpt.best_model_path or ckpt.last_model_path or out / "model.ckpt")


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int = 3,
    train_size: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 128,
    quiet: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Run the demo; write checkpoints, groupings, logs, ``summary.json`` and ``report.html``
    under ``out``."""
    say = log or (lambda *a: None)
    out = Path(out)
    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    torch.set_float32_matmul_precision("high")
    dm = InMemoryDataModule(
        "fashion-mnist",
        data_dir,
        batch_size=batch_size,
        eval_batch_size=1000,
        heldout=0.1,
        seed=seed,
        max_shift=2,
        flip=True,
        train_size=train_size,
    )
    dm.setup("fit")
    n_train = len(dm.train_arrays)
    n_held = len(dm.heldout_arrays)
    say(f"Fashion-MNIST: {n_train} training, {n_held} held-out, {len(dm.test_arrays)} test images")

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return dm.prepare_batch(x, False)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"[1/4] training the baseline ({DEMO_RECIPE['model']}, {epochs} epochs)")
    t = time.perf_counter()
    base = SSALModule(num_classes=10, in_channels=1, **DEMO_RECIPE)
    base_ckpt = _train(base, dm, out / "baseline", epochs, quiet)
    base_time = time.perf_counter() - t

    say("[2/4] grouping the classes from the baseline's held-out confusion")
    confusion = heldout_confusion(base.net, dm.heldout_dataloader(), prepare, 10, device)
    groupings = [Grouping.from_confusion(confusion, g, "similar", seed=seed) for g in DEMO_GROUPS]
    groupings_path = save_groupings(out / "groupings.json", groupings, dm.class_names)
    names = dm.class_names
    for g in groupings:
        groups = [" + ".join(names[c] for c in g.members(k)) for k in range(g.num_groups)]
        say(f"      {g.name}: " + " | ".join(groups))

    say(f"[3/4] training the same network with SSAL branches ({epochs} epochs)")
    t = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    model = SSALModule(num_classes=10, in_channels=1, groupings=str(groupings_path), **DEMO_RECIPE)
    ssal_ckpt = _train(model, dm, out / "ssal", epochs, quiet)
    ssal_time = time.perf_counter() - t

    say("[4/4] choosing alpha on the held-out split, evaluating on the test set")
    bars = {"progress": not quiet}
    held = evaluate_model(
        model.net, dm.heldout_dataloader(), prepare, 10, model.alpha, device, **bars
    )
    alpha = held["best_alpha"]
    set_checkpoint_alpha(ssal_ckpt, alpha, "held-out split")  # evaluate/predict use it
    base_test = evaluate_model(base.net, dm.test_dataloader(), prepare, 10, 0.0, device, **bars)
    ssal_test = evaluate_model(model.net, dm.test_dataloader(), prepare, 10, alpha, device, **bars)
    for r in (base_test, ssal_test):
        r.pop("confusion", None)
    summary = {
        "baseline_accuracy": base_test["fine_accuracy"],
        "tr_accuracy": ssal_test["fine_accuracy"],
        "jp_accuracy": ssal_test["joint_accuracy"],
        "alpha": alpha,
        "alpha_chosen_on": "held-out split",
        "heldout_joint_accuracy_by_alpha": held["joint_accuracy_by_alpha"],
        "branch_accuracy": ssal_test["branch_accuracy"],
        "consistency": ssal_test["consistency"],
        "groupings": str(groupings_path),
        "groupings_detail": [g.to_dict() for g in groupings],
        "baseline_checkpoint": str(base_ckpt),
        "ssal_checkpoint": str(ssal_ckpt),
        "epochs": epochs,
        "train_size": n_train,
        "test_size": ssal_test["num_samples"],
        "seed": seed,
        "device": device,
        "baseline_train_seconds": round(base_time, 1),
        "ssal_train_seconds": round(ssal_time, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "summary.json", summary)
    say(f"writing {out / 'report.html'}: plots and the paper's analysis, side by side")
    report, _ = write_report(
        [out / "baseline", out / "ssal"],
        out / "report.html",
        device=device,
        datamodule=dm,
        heldout={"ssal": held},
        **bars,
    )
    summary["report"] = str(report)
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary)
    return summary
