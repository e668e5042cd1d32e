"""The training engine's thin layer: ``SSALModule`` wires the method into Lightning.

The network comes from ``create_model``, the loss is ``SSALLoss``, validation figures are
``SSALMetrics``, the optimiser and schedule come from ``ssal.recipe`` and the checkpoint's
``"ssal"`` section from ``ssal.checkpoint``; what is left here is Lightning's hooks and the
fast-path switches (``compile``, ``channels_last``), which default to on for CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from ssal.backbones import create_model, get_entry
from ssal.checkpoint import (  # load/read/export: here too for code written before 0.2
    CHECKPOINT_KEY,
    describe_model,
    export_checkpoint,
    groupings_of,
    load_checkpoint,
    read_checkpoint,
)
from ssal.grouping import Grouping, check_class_names, groupings_from_spec
from ssal.loss import SSALLoss
from ssal.metrics import SSALMetrics
from ssal.model import SSALModel, SSALOutput
from ssal.recipe import check_recipe, decay_by_kind, parameter_groups, sgd, warmup_linear_decay

__all__ = [
    "COMPILE_MODES",
    "SSALModule",
    "export_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]

# torch.compile's modes; "reduce-overhead" and "max-autotune" add CUDA graphs.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class SSALModule(L.LightningModule):
    """Trains a registered model as a baseline (``groupings=None``) or with SSAL branches.

    ``groupings``: a groupings file (ssal JSON, or one grouping in the authors' text format), a
    list of such files (the authors' three, one per branch), a built-in hierarchy
    (``cifar100-superclasses``), ``auto`` (a short baseline probe is trained first and its
    held-out confusion grouped into ``auto_groups``, see ``ssal.callbacks.AutoGroupings``) or
    ``None``. With fewer groupings
    than the model has branch positions, the deepest positions are used. ``compile`` and
    ``channels_last`` default to on for CUDA devices and off elsewhere; ``compile_mode`` is
    ``torch.compile``'s ``mode``. ``weight_decay``/``branch_weight_decay`` are PyTorch
    ``weight_decay`` values (a Keras ``l2(wd)`` is ``2 * wd``) on conv and linear weights; norm
    layers and biases get none unless ``decay_norm_and_bias``; ``weight_decay_by_kind`` sets
    the value of any kind of parameter (``ssal.recipe.DECAY_KINDS``, e.g.
    ``backbone.linear.bias``: the authors' runs decay classifier and branch dense layers
    differently per model). The learning rate warms up over ``warmup_epochs`` and decays
    linearly, stepped per ``schedule_interval``; ``schedule_first_epoch`` is the number the
    schedule gives the first epoch (0, as Keras counts; 1, as the authors' PyTorch trainer).
    ``pretrained``: ``True`` for the backbone's published weights (timm and torchvision
    backbones), or a state dict or safetensors file; the branches start fresh.
    ``backbone_lr_factor`` scales the backbone's learning rate against the branches'
    (fine-tuning: e.g. 0.1).
    """

    def __init__(
        self,
        model: str = "small-cnn",
        num_classes: int = 10,
        in_channels: int | None = None,
        groupings: str | list[str] | None = None,
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
        weight_decay_by_kind: dict[str, float] | None = None,
        warmup_epochs: int = 10,
        schedule_interval: Literal["epoch", "step"] = "epoch",
        schedule_first_epoch: int = 0,
        bn_momentum: float | None = None,
        compile: bool | None = None,
        compile_mode: str | None = None,
        channels_last: bool | None = None,
        pretrained: bool | str | None = None,
        backbone_lr_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if schedule_first_epoch < 0:
            raise ValueError(f"schedule_first_epoch must be >= 0, got {schedule_first_epoch}")
        check_recipe(lr, momentum, weight_decay, branch_weight_decay, backbone_lr_factor)
        decay_by_kind(weight_decay, branch_weight_decay, overrides=weight_decay_by_kind)
        self.save_hyperparameters()
        self.entry = get_entry(model)
        self.alpha = self.entry.branches.alpha if alpha is None else float(alpha)
        self.class_names: list[str] | None = None
        self.preprocessing: dict[str, Any] | None = None
        self.data_config: dict[str, Any] | None = None
        self.input_size: list[int] | None = None  # of the training images, once data is set up
        self.last_metrics: dict[str, Any] = {}
        self._compiled: list[nn.Module] = []
        spec = None if groupings == "auto" else groupings
        self.set_groupings(groupings_from_spec(spec, num_classes))

    # -------------------------------------------------------------------------- building
    def set_groupings(self, groupings: Sequence[Grouping] | None) -> None:
        """(Re)build the network, loss and metrics for ``groupings`` (``None``: baseline)."""
        hp = self.hparams
        self.net: SSALModel = create_model(
            hp.model,
            hp.num_classes,
            groupings,
            in_channels=hp.in_channels,
            positions=hp.positions,
            layouts=hp.layouts,
            bn_momentum=hp.bn_momentum,
            pretrained=hp.pretrained,
            image_size=self._sized_side(),
        )
        self.groupings = list(self.net.groupings)
        self.branch_weights = self.entry.branch_weights(len(self.groupings), hp.branch_weights)
        self.loss = SSALLoss(
            self.groupings, self.branch_weights, hp.label_smoothing, hp.smoothing_convention
        )
        self.val_metrics = SSALMetrics(self.net.group_indices, hp.num_classes, self.alpha)
        self._compiled = []

    def _sized_side(self) -> int | None:
        """The side of the images, where the backbone is built for one size (ViT, Swin)."""
        size = getattr(self, "input_size", None)
        return int(size[-1]) if size and self.entry.network.sized else None

    def _fit_image_size(self) -> None:
        """Rebuild a backbone built for one image size when the data's size is another."""
        side = self._sized_side()
        if side is not None and tuple(self.net.input_size[1:]) != (side, side):
            self.set_groupings(self.groupings or None)

    @property
    def awaits_groupings(self) -> bool:
        """Configured with ``groupings: auto`` and not given any yet."""
        return self.hparams.groupings == "auto" and not self.groupings

    def configure_callbacks(self) -> list[L.Callback]:
        """``groupings: auto`` brings the callback that derives them (in Python too)."""
        if self.hparams.groupings != "auto":
            return []
        from ssal.callbacks import AutoGroupings

        if self._trainer is not None and any(
            isinstance(c, AutoGroupings) for c in self.trainer.callbacks
        ):
            return []  # the trainer's own (``out`` chosen by the user) is kept
        return [AutoGroupings()]

    def _switch(self, name: str) -> bool:
        """A fast-path switch: its configured value, or (``None``) on where it helps (CUDA)."""
        value = self.hparams[name]
        if value is not None:
            return bool(value)
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        return device.type == "cuda"

    def forward_net(self) -> nn.Module:
        """The network that runs the forward pass: ``net``, compiled once where ``compile``
        is on (the fast path's switch, or CUDA)."""
        if self._switch("compile") and not self._compiled:
            self._compiled.append(torch.compile(self.net, mode=self.hparams.compile_mode))
        return self._compiled[0] if self._compiled else self.net

    def forward(self, x: torch.Tensor) -> SSALOutput:
        if self._switch("channels_last") and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_net()(x)

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
        check_class_names(self.groupings, self.class_names)
        self.preprocessing = dm.preprocessing()
        self.data_config = dm.describe()
        size = getattr(dm, "image_size", None)
        self.input_size = [int(dm.in_channels), int(size), int(size)] if size else None
        self._fit_image_size()
        if self._switch("channels_last"):
            self.net.to(memory_format=torch.channels_last)

    # -------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        parts = self.loss(self(x), y)
        self.log("train/loss", parts.total)  # the progress bar shows it without a sync
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
            self.log("val/kept_fraction", m["set_aside"]["kept_fraction"])
            self.log("val/kept_accuracy", m["set_aside"]["kept_accuracy"])

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    # -------------------------------------------------------------------------- recipe
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = parameter_groups(
            self.net,
            hp.weight_decay,
            hp.branch_weight_decay,
            hp.decay_norm_and_bias,
            by_kind=hp.weight_decay_by_kind,
            backbone_lr_factor=hp.backbone_lr_factor,
        )
        optimizer = sgd(groups, hp.lr, hp.momentum, hp.nesterov, self.device.type == "cuda")
        total = max(1, self.trainer.max_epochs or 1)
        per_epoch = None
        if hp.schedule_interval == "step":
            per_epoch = self.trainer.estimated_stepping_batches / total
        scheduler = warmup_linear_decay(
            optimizer, hp.warmup_epochs, total, per_epoch, hp.schedule_first_epoch
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": hp.schedule_interval},
        }

    # -------------------------------------------------------------------------- checkpoints
    def export_info(self) -> dict[str, Any]:
        """Everything evaluation needs, as plain values (``ssal.checkpoint.describe_model``)."""
        return describe_model(
            self.net,
            self.hparams.model,
            self.hparams.num_classes,
            self.branch_weights,
            self.alpha,
            self.class_names,
            self.preprocessing,
            self.data_config,
            self.input_size,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.export_info()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get(CHECKPOINT_KEY) or {}
        self.input_size = info.get("input_size")
        groupings = groupings_of(info) if info.get("groupings") else []
        if [g.assignment.tolist() for g in groupings] != [
            g.assignment.tolist() for g in self.groupings
        ]:
            self.set_groupings(groupings or None)
        else:
            self._fit_image_size()  # the size it trained at
        self.class_names = info.get("class_names")
        self.preprocessing = info.get("preprocessing")
        self.data_config = info.get("data")
