"""The training engine's thin layer: a LightningModule and the paper's recipe.

``SSALModule`` wires the method's parts (``create_model``, ``SSALLoss``, ``SSALMetrics``) into
Lightning; the recipe is the paper's: SGD (Nesterov where used), L2 on layer weights with a
separate value for the branches, linear warm-up then linear decay. Checkpoints carry, under
``"ssal"``, everything evaluation needs (model name, groupings, alpha, normalisation, data
settings) as plain values, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from ssal.backbones.registry import create_model, get_entry
from ssal.files import write_json
from ssal.grouping import BUILTIN_HIERARCHIES, Grouping, load_groupings
from ssal.loss import SSALLoss
from ssal.metrics import SSALMetrics
from ssal.model import SSALModel

__all__ = [
    "SSALModule",
    "export_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "read_checkpoint",
    "resolve_groupings",
    "set_checkpoint_alpha",
]

CHECKPOINT_KEY = "ssal"


def lr_factor(epoch: float, warmup: int, total: int) -> float:
    """The paper's schedule at (0-based, possibly fractional) ``epoch``, as a factor of peak lr.

    ``(e+1)/m`` while ``e < m``, then ``1 - (e+1-m)/(E+1-m)``: linear warm-up over ``m``
    epochs, linear decay to about 0 at the last epoch ``E - 1``. At whole epochs this is the
    paper's formula; between them (per-step schedules) it is the line joining them.
    """
    if epoch < warmup - 1:
        return (epoch + 1) / warmup
    return min(1.0, max(0.0, 1.0 - (epoch + 1 - warmup) / (total + 1 - warmup)))


def resolve_groupings(spec: str | None, num_classes: int) -> list[Grouping] | None:
    """``None``/"none" (baseline), a built-in hierarchy name, or a groupings JSON file."""
    if spec is None or spec.lower() in ("none", "baseline", ""):
        return None
    if spec in BUILTIN_HIERARCHIES:
        g = BUILTIN_HIERARCHIES[spec]()
        if g.num_classes != num_classes:
            raise ValueError(f"{spec} covers {g.num_classes} classes, the data has {num_classes}")
        return [g]
    if spec == "auto":
        raise ValueError("groupings 'auto' are derived by `ssal fit` before training")
    groupings, _ = load_groupings(spec, num_classes=num_classes)
    return groupings


# torch.compile's modes; "reduce-overhead" and "max-autotune" add CUDA graphs.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class SSALModule(L.LightningModule):
    """Trains a registered model as a baseline (``groupings=None``) or with SSAL branches.

    ``groupings``: a groupings JSON file, a built-in hierarchy (``cifar100-superclasses``),
    ``auto`` (``ssal fit`` trains a short baseline probe first and groups its held-out
    confusion) or ``None``. With fewer groupings than the model has branch positions, the
    deepest positions are used. ``compile`` and ``channels_last`` default to on for CUDA
    devices and off elsewhere; ``compile_mode`` is ``torch.compile``'s ``mode``.
    ``weight_decay``/``branch_weight_decay`` are PyTorch ``weight_decay`` values (a Keras
    ``l2(wd)`` is ``2 * wd``) applied to conv and linear weights; norm layers and biases get
    none unless ``decay_norm_and_bias``.
    """

    def __init__(
        self,
        model: str = "small-cnn",
        num_classes: int = 10,
        in_channels: int | None = None,
        groupings: str | None = None,
        auto_groups: list[int] | None = None,
        auto_mode: Literal["similar", "split"] = "similar",
        probe_epochs: int = 5,
        branch_weights: list[float] | None = None,
        positions: list[str] | None = None,
        layouts: list[str] | None = None,
        alpha: float | None = None,
        label_smoothing: float = 0.0,
        smoothing_convention: Literal["torch", "paper"] = "torch",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        branch_weight_decay: float | None = None,
        decay_norm_and_bias: bool = False,
        warmup_epochs: int = 10,
        schedule_interval: Literal["epoch", "step"] = "epoch",
        bn_momentum: float | None = None,
        compile: bool | None = None,
        compile_mode: str | None = None,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.save_hyperparameters()
        self.entry = get_entry(model)
        self.alpha = self.entry.alpha if alpha is None else float(alpha)
        self.class_names: list[str] | None = None
        self.normalization: dict[str, list[float]] | None = None
        self.data_config: dict[str, Any] | None = None
        self.last_metrics: dict[str, Any] = {}
        self._compiled: list[nn.Module] = []
        spec = None if groupings == "auto" else groupings
        self.set_groupings(resolve_groupings(spec, num_classes))

    # -------------------------------------------------------------------------- building
    def set_groupings(self, groupings: Sequence[Grouping] | None) -> None:
        """(Re)build the network, loss and metrics for ``groupings`` (``None``: baseline)."""
        hp = self.hparams
        k = len(groupings) if groupings else 0
        n_pos = len(hp.positions or self.entry.positions)
        if k > n_pos:
            raise ValueError(f"{k} groupings but {hp.model} has {n_pos} branch positions")
        positions = list(hp.positions or self.entry.positions)[n_pos - k :]
        layouts = list(hp.layouts or self.entry.layouts)
        layouts = layouts[len(layouts) - k :] if len(layouts) > 1 else layouts
        weights = list(hp.branch_weights or self.entry.weights)
        weights = weights[len(weights) - k :] if k else []
        self.net: SSALModel = create_model(
            hp.model,
            hp.num_classes,
            groupings if k else None,
            in_channels=hp.in_channels,
            positions=positions,
            layouts=layouts,
        )
        if hp.bn_momentum is not None:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = hp.bn_momentum
        self.groupings = list(groupings) if k else []
        self.branch_weights = weights
        self.loss = SSALLoss(self.groupings, weights, hp.label_smoothing, hp.smoothing_convention)
        self.val_metrics = SSALMetrics(self.net.group_indices, hp.num_classes, self.alpha)
        self._compiled = []

    def _switch(self, name: str) -> bool:
        """A fast-path switch: its configured value, or (``None``) on where it helps (CUDA)."""
        value = self.hparams[name]
        if value is not None:
            return bool(value)
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        return device.type == "cuda"

    def _forward_net(self) -> nn.Module:
        if self._switch("compile") and not self._compiled:
            self._compiled.append(torch.compile(self.net, mode=self.hparams.compile_mode))
        return self._compiled[0] if self._compiled else self.net

    def forward(self, x: torch.Tensor):  # noqa: ANN201 - SSALOutput
        if self._switch("channels_last") and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward_net()(x)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if dm is None:
            return
        if getattr(dm, "num_classes", self.hparams.num_classes) != self.hparams.num_classes:
            raise ValueError(
                f"the data has {dm.num_classes} classes but the model was built for "
                f"{self.hparams.num_classes}; set --model.num_classes {dm.num_classes}"
            )
        self.class_names = list(dm.class_names)
        self.normalization = {"mean": list(dm.mean), "std": list(dm.std)}
        self.data_config = {
            "class_path": f"{type(dm).__module__}.{type(dm).__name__}",
            "init_args": dict(getattr(dm, "hparams", {})),
        }
        if self._switch("channels_last"):
            self.net.to(memory_format=torch.channels_last)

    # -------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):  # noqa: ANN201
        x, y = batch
        parts = self.loss(self(x), y)
        self.log("train/loss", parts.total)  # LossProgressBar shows it without a sync
        self.log("train/loss_fine", parts.fine)
        for i, p in enumerate(parts.branches):
            self.log(f"train/loss_branch{i + 1}", p)
        return parts.total

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        parts = self.loss(out, y)
        self.log("val/loss", parts.total, sync_dist=True)
        self.log("val/loss_fine", parts.fine, sync_dist=True)
        for i, p in enumerate(parts.branches):
            self.log(f"val/loss_branch{i + 1}", p, sync_dist=True)
        self.val_metrics.update(out.logits, out.branch_logits, y)

    def on_validation_epoch_end(self) -> None:
        m = self.val_metrics.compute()
        self.val_metrics.reset()
        m.pop("confusion", None)
        self.last_metrics = m
        self.log("val/acc_fine", m["fine_accuracy"], prog_bar=True)
        self.log("val/num_samples", float(m["num_samples"]))
        if self.groupings:
            self.log("val/acc_joint", m["joint_accuracy"], prog_bar=True)
            for i, a in enumerate(m["branch_accuracy"]):
                self.log(f"val/acc_branch{i + 1}", a)
            self.log("val/kept_fraction", m["consistency"]["kept_fraction"])
            self.log("val/kept_accuracy", m["consistency"]["kept_accuracy"])

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    # -------------------------------------------------------------------------- recipe
    def configure_optimizers(self):  # noqa: ANN201
        hp = self.hparams
        branch_wd = hp.weight_decay if hp.branch_weight_decay is None else hp.branch_weight_decay
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "branches": [], "no_decay": []}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 and not hp.decay_norm_and_bias:
                groups["no_decay"].append(p)
            else:
                groups["branches" if name.startswith("branches.") else "backbone"].append(p)
        wd = {"backbone": hp.weight_decay, "branches": branch_wd, "no_decay": 0.0}
        params = [
            {"params": ps, "weight_decay": wd[k], "name": k} for k, ps in groups.items() if ps
        ]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.SGD(
            params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, fused=fused or None
        )
        total = max(1, self.trainer.max_epochs or 1)
        warmup = min(hp.warmup_epochs, total)
        if hp.schedule_interval == "step":
            per_epoch = max(1, math.ceil(self.trainer.estimated_stepping_batches / total))

            def factor(step: int) -> float:
                return lr_factor(step / per_epoch, warmup, total)
        else:

            def factor(epoch: int) -> float:
                return lr_factor(epoch, warmup, total)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": hp.schedule_interval},
        }

    # -------------------------------------------------------------------------- checkpoints
    def export_info(self) -> dict[str, Any]:
        """Everything evaluation needs, as plain values."""
        return {
            "model": self.hparams.model,
            "num_classes": self.hparams.num_classes,
            "in_channels": self.net.input_size[0],
            "input_size": list(self.net.input_size),
            "positions": list(self.net.positions),
            "layouts": list(self.net.layouts),
            "groupings": [g.to_dict() for g in self.groupings],
            "branch_weights": list(self.branch_weights),
            "alpha": self.alpha,
            "class_names": self.class_names,
            "normalization": self.normalization,
            "data": self.data_config,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.export_info()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get(CHECKPOINT_KEY) or {}
        groupings = [Grouping.from_dict(d) for d in info.get("groupings", [])]
        if [g.assignment.tolist() for g in groupings] != [
            g.assignment.tolist() for g in self.groupings
        ]:
            self.set_groupings(groupings or None)
        self.class_names = info.get("class_names")
        self.normalization = info.get("normalization")
        self.data_config = info.get("data")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a loadable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an ssal checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


EXPORT_WEIGHTS, EXPORT_INFO = "model.safetensors", "ssal.json"


def _read_export(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An ``ssal export`` folder: weights as safetensors (no pickle) and a JSON description."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info_path, weights = folder / EXPORT_INFO, folder / EXPORT_WEIGHTS
    for p in (info_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: not an ssal export (missing {p.name})")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{info_path}: not valid JSON ({e})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a loadable safetensors file ({e})") from None
    return info, {f"net.{k}": v for k, v in state.items()}


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SSALModel, dict[str, Any]]:
    """Rebuild the trained ``SSALModel`` from a checkpoint or an ``ssal export`` folder.

    Returns the model (eval mode) and its info: model name, groupings, alpha, class names,
    normalisation and data settings.
    """
    path = Path(path)
    if path.is_dir() or path.name in (EXPORT_INFO, EXPORT_WEIGHTS):
        info, state_dict = _read_export(path if path.is_dir() else path.parent)
        ckpt: dict[str, Any] = {}
    else:
        ckpt = read_checkpoint(path, map_location)
        info, state_dict = ckpt[CHECKPOINT_KEY], ckpt["state_dict"]
    info = dict(info)
    try:
        groupings = [Grouping.from_dict(d) for d in info["groupings"]] or None
        model = create_model(
            info["model"],
            info["num_classes"],
            groupings,
            in_channels=info["in_channels"],
            positions=info["positions"] or None,
            layouts=info["layouts"] or None,
        )
    except KeyError as e:
        raise ValueError(f"{path}: the model description lacks {e}") from None
    state = {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {info['model']} ({str(e)[:200]})") from None
    info["groupings"] = groupings or []
    info["epoch"] = ckpt.get("epoch", info.get("epoch"))
    info["global_step"] = ckpt.get("global_step", info.get("global_step"))
    return model.eval(), info


def set_checkpoint_alpha(path: str | Path, alpha: float, chosen_on: str) -> None:
    """Store a tuned alpha in a checkpoint (atomically), so evaluation and predict use it."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    ckpt[CHECKPOINT_KEY]["alpha"] = float(alpha)
    ckpt[CHECKPOINT_KEY]["alpha_chosen_on"] = chosen_on
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def export_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's weights as safetensors plus ``ssal.json`` (model, groupings, alpha).

    The pair loads without unpickling anything (``load_checkpoint(out)``), so it is safe to
    share; ``ssal evaluate`` and ``ssal predict`` accept the folder.
    """
    from safetensors.torch import save_file

    ckpt = read_checkpoint(path)
    info = dict(ckpt[CHECKPOINT_KEY])
    info.update(epoch=ckpt.get("epoch"), global_step=ckpt.get("global_step"), source=str(path))
    state = {
        k[4:]: v.contiguous()
        for k, v in ckpt["state_dict"].items()
        if k.startswith("net.") and isinstance(v, torch.Tensor)
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EXPORT_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "model": str(info["model"])})
    tmp.replace(out / EXPORT_WEIGHTS)
    write_json(out / EXPORT_INFO, info)
    return out
