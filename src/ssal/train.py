"""The training engine's thin layer: ``SSALModule`` wires the method into Lightning.

The network comes from ``create_model``, the loss is ``SSALLoss``, validation figures are
``SSALMetrics``, the optimiser and schedule come from ``ssal.recipe`` and the checkpoint's
``"ssal"`` section from ``ssal.checkpoint``; what is left here is Lightning's hooks and the
fast-path switches (``compile``, ``channels_last``), which default to on for CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from ssal.args import (
    GroupingArgs,
    LossArgs,
    NetworkArgs,
    OptimArgs,
    SpeedArgs,
    as_plain,
    coerce,
)
from ssal.backbones import create_model, default_groupings, get_entry
from ssal.card import ModelCard, Preprocessing
from ssal.checkpoint import CHECKPOINT_KEY
from ssal.errors import UserError
from ssal.files import squeeze
from ssal.grouping import Grouping, check_class_names, groupings_from_spec
from ssal.lightning_adapter import attached_trainer
from ssal.loss import SSALLoss
from ssal.metrics import SSALMetrics
from ssal.model import SSALModel, SSALOutput
from ssal.recipe import check_recipe, decay_by_kind, parameter_groups, sgd, warmup_linear_decay

__all__ = ["COMPILE_MODES", "SSALModule"]

# torch.compile's modes; "reduce-overhead" and "max-autotune" add CUDA graphs.
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check_args(optim: OptimArgs, speed: SpeedArgs) -> None:
    """``ValueError`` for a recipe SGD cannot use or a ``compile_mode`` torch does not know."""
    if speed.compile_mode not in COMPILE_MODES:
        raise UserError(f"compile_mode must be one of {COMPILE_MODES}, got {speed.compile_mode!r}")
    if optim.schedule_first_epoch < 0:
        raise UserError(f"schedule_first_epoch must be >= 0, got {optim.schedule_first_epoch}")
    check_recipe(
        optim.lr,
        optim.momentum,
        optim.weight_decay,
        optim.branch_weight_decay,
        optim.backbone_lr_factor,
    )
    decay_by_kind(
        optim.weight_decay, optim.branch_weight_decay, overrides=optim.weight_decay_by_kind
    )


class SSALModule(L.LightningModule):
    """Trains a registered network as a baseline (no groupings) or with SSAL branches.

    The arguments come in groups, as configs spell them (``ssal.args``): ``network`` (which
    network, where its branches go, pretrained weights), ``groupings`` (what the branches
    predict: files, a built-in hierarchy, ``auto`` or ``Grouping`` objects), ``loss``, ``optim``
    (SGD and its schedule) and ``speed`` (``torch.compile``, channels-last: on for CUDA unless
    set). Each takes its dataclass or a mapping of its fields. ``num_classes`` and
    ``in_channels`` come from the data (``ssal fit`` links them); ``alpha`` is the weight of
    joint prediction (``None``: the model's). ``groupings: auto`` is resolved before training
    by ``ssal.trainer.derive_groupings`` (``ssal fit`` runs it).
    """

    def __init__(
        self,
        network: NetworkArgs = NetworkArgs(),
        num_classes: int = 10,
        in_channels: int | None = None,
        groupings: GroupingArgs = GroupingArgs(),
        loss: LossArgs = LossArgs(),
        optim: OptimArgs = OptimArgs(),
        speed: SpeedArgs = SpeedArgs(),
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.network = coerce(NetworkArgs, network)
        self.grouping_args = coerce(GroupingArgs, groupings)
        self.loss_args = coerce(LossArgs, loss)
        self.optim = coerce(OptimArgs, optim)
        self.speed = coerce(SpeedArgs, speed)
        self.num_classes, self.in_channels = int(num_classes), in_channels
        _check_args(self.optim, self.speed)
        self.save_hyperparameters(
            {
                "network": as_plain(self.network),
                "num_classes": self.num_classes,
                "in_channels": in_channels,
                "groupings": as_plain(self.grouping_args),
                "loss": as_plain(self.loss_args),
                "optim": as_plain(self.optim),
                "speed": as_plain(self.speed),
                "alpha": alpha,
            }
        )
        self.entry = get_entry(self.network.name)
        self.alpha = self.entry.branches.alpha if alpha is None else float(alpha)
        self.class_names: list[str] | None = None
        self.preprocessing: Preprocessing | None = None
        self.data_config: dict[str, Any] | None = None
        self.input_size: list[int] | None = None  # of the training images, once data is set up
        self.last_metrics: dict[str, Any] = {}
        self._compiled: list[nn.Module] = []
        self.probing = False  # trained as the probe of ``groupings: auto`` (never compiled)
        source = self.grouping_args
        given = source.given
        if given is None and not source.auto:
            given = groupings_from_spec(source.source, self.num_classes)  # type: ignore[arg-type]
        self.set_groupings(given)

    # -------------------------------------------------------------------------- building
    def set_groupings(self, groupings: Sequence[Grouping] | None) -> None:
        """(Re)build the network, loss and metrics for ``groupings`` (``None``: baseline)."""
        net, loss = self.network, self.loss_args
        self.net: SSALModel = create_model(
            net.name,
            self.num_classes,
            groupings,
            in_channels=self.in_channels,
            positions=net.positions,
            layouts=net.layouts,
            bn_momentum=net.bn_momentum,
            pretrained=net.pretrained,
            image_size=self._sized_side(),
        )
        self.groupings = list(self.net.groupings)
        self.branch_weights = self.entry.branch_weights(len(self.groupings), loss.branch_weights)
        self.loss = SSALLoss(
            self.groupings, self.branch_weights, loss.label_smoothing, loss.smoothing_convention
        )
        self.val_metrics = SSALMetrics(self.net.group_indices, self.num_classes, self.alpha)
        self._compiled = []

    def check_runs_on(self, channels: int, size: int | None) -> None:
        """Build the SSAL model (placeholder groupings of the sizes ``groupings: auto`` will
        derive, where it waits for them) on the ``meta`` device and run one batch of the data's
        images through it, before anything trains: positions that give no feature map, layouts
        that do not fit and an image size the backbone does not take are one ``UserError``
        line here, not a traceback after a probe has trained. Nothing is allocated."""
        groupings = self.groupings
        if not groupings and self.grouping_args.auto:
            sizes = self.grouping_args.auto_groups or self.entry.group_sizes(self.num_classes)
            groupings = default_groupings(self.num_classes, sizes)
        net = self.network
        side = f"{size} x {size}" if size else "x".join(map(str, self.net.input_size[1:]))
        try:
            with torch.device("meta"):
                trial = create_model(
                    net.name,
                    self.num_classes,
                    groupings or None,
                    in_channels=channels,
                    positions=net.positions,
                    layouts=net.layouts,
                    image_size=size if self.entry.network.sized else None,
                )
                shape = (2, channels, size, size) if size else (2, *trial.input_size)
                trial.eval()(torch.empty(shape))
        except UserError:
            raise
        except NotImplementedError:  # an operation without a meta kernel: nothing to check
            return
        except Exception as e:  # what the backbone says of an input it does not take
            raise UserError(
                f"{net.name} with its SSAL branches does not run on {channels}-channel "
                f"{side} images ({squeeze(e)[:200]}); give an image size it takes "
                f"(--data.init_args.image_size; its own is "
                f"{'x'.join(map(str, self.entry.network.input_size[1:]))})"
            ) from None

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
        return self.grouping_args.auto and not self.groupings

    def _switch(self, name: str) -> bool:
        """A fast-path switch: its configured value, or (``None``) on where it helps (CUDA)."""
        value = getattr(self.speed, name)
        if value is not None:
            return bool(value)
        trainer = attached_trainer(self)
        device = trainer.strategy.root_device if trainer is not None else self.device
        return device.type == "cuda"

    def forward_net(self) -> nn.Module:
        """The network that runs the forward pass: ``net``, compiled once where ``compile``
        is on (the fast path's switch, or CUDA)."""
        if self.probing:
            return self.net
        if self._switch("compile") and not self._compiled:
            self._compiled.append(torch.compile(self.net, mode=self.speed.compile_mode))
        return self._compiled[0] if self._compiled else self.net

    def forward(self, x: torch.Tensor) -> SSALOutput:
        if self._switch("channels_last") and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_net()(x)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if attached_trainer(self) else None
        if dm is None:
            return
        if getattr(dm, "num_classes", self.num_classes) != self.num_classes:
            raise UserError(
                f"the data has {dm.num_classes} classes but the model was built for "
                f"{self.num_classes}; set --model.num_classes {dm.num_classes}"
            )
        if stage == "fit" and self.awaits_groupings and not self.probing:
            raise UserError(
                "groupings: auto are derived before training: call "
                "ssal.trainer.derive_groupings(module, datamodule) before fit (ssal fit does)"
            )
        if stage == "fit" and not self.probing:  # derive_groupings checks before the probe
            self.check_runs_on(int(dm.in_channels), getattr(dm, "image_size", None))
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
        hp = self.optim
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
    def card(self) -> ModelCard:
        """The model's card: everything evaluation and inference need (``ssal.card``)."""
        return ModelCard.of(
            self.net,
            self.network.name,
            self.num_classes,
            self.preprocessing,
            self.input_size,
            branch_weights=self.branch_weights,
            alpha=self.alpha,
            class_names=self.class_names,
            data=self.data_config,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.card().to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            return
        card = ModelCard.from_dict(checkpoint[CHECKPOINT_KEY], "the checkpoint")
        self.input_size = list(card.input_size)
        if [g.assignment.tolist() for g in card.groupings] != [
            g.assignment.tolist() for g in self.groupings
        ]:
            self.set_groupings(list(card.groupings) or None)
        else:
            self._fit_image_size()  # the size it trained at
        self.class_names = list(card.class_names) if card.class_names is not None else None
        self.preprocessing = card.preprocessing
        self.data_config = card.data_config()
