"""SSALModel: SSAL branches attached to any backbone by module name.

The backbone is left untouched: forward hooks on the named modules hand their feature maps to
the branches, so torchvision, timm or a user's own network work alike. One forward pass gives
the fine logits and one logits tensor per branch.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ssal.errors import UserError
from ssal.features import FeatureRead, parse_position, settle_read
from ssal.grouping import Grouping, as_grouping
from ssal.layouts import build_branch, reads_tokens

__all__ = ["BranchSpec", "SSALModel", "SSALOutput", "group_index_name", "resolve_position"]


def group_index_name(branch: int) -> str:
    """The buffer name of branch ``branch``'s class-to-group index (models, losses and
    metrics hold one per branch; checkpoints store the model's)."""
    return f"group_index_{branch}"


class SSALOutput(NamedTuple):
    """Fine logits ``(N, C)`` and one ``(N, G_i)`` logits tensor per branch."""

    logits: torch.Tensor
    branch_logits: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BranchSpec:
    """Where a branch reads (a backbone module name), what it is (a layout), what it predicts.

    ``position`` is the dotted name of a backbone module whose output the branch reads; append
    ``":input"`` to read the module's input instead, and ``":nchw"``, ``":nhwc"`` or
    ``":tokens"`` to say how the tensor is laid out (``ssal.features``). ``in_channels`` is
    inferred when ``None``.
    """

    position: str
    layout: str
    grouping: Grouping | np.ndarray | Sequence[int]
    in_channels: int | None = None


def resolve_position(backbone: nn.Module, position: str) -> tuple[nn.Module, bool]:
    """Module named by ``position`` and whether its input (not output) is meant."""
    parsed = parse_position(position)
    name, use_input = parsed.module, parsed.use_input
    names = [n for n, _ in backbone.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"backbone has no module named {name!r} for a branch position{hint}")
    return backbone.get_submodule(name), use_input


class SSALModel(nn.Module):
    """A backbone with SSAL branches; ``forward`` returns ``SSALOutput``.

    With no branches it returns exactly the backbone's logits. Parameters of the backbone and
    of the branches live under ``backbone`` and ``branches`` so optimisers can treat them
    apart (the paper's separate branch weight decay).
    """

    def __init__(
        self,
        backbone: nn.Module,
        branches: Sequence[BranchSpec] = (),
        input_size: Sequence[int] = (3, 224, 224),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = tuple(int(s) for s in input_size)
        self.positions = [b.position for b in branches]
        self.layouts = [b.layout for b in branches]
        self.groupings = [as_grouping(b.grouping) for b in branches]
        self._taps: list[torch.Tensor | None] = [None] * len(branches)
        # a list, not a bool: the hooks read it and dynamo traces list items as constants
        self._reading = [False]
        targets = [resolve_position(backbone, b.position) for b in branches]
        self.reads = self._settle_reads(branches, targets)
        self.branches = nn.ModuleList(
            build_branch(b.layout, r.channels, g.num_groups, prefix_tokens=r.prefix)
            for b, r, g in zip(branches, self.reads, self.groupings, strict=True)
        )
        for i, g in enumerate(self.groupings):
            # a copy: loading weights into the buffer must never change the Grouping
            index = torch.tensor(g.assignment, dtype=torch.long)
            self.register_buffer(group_index_name(i), index, persistent=True)
        for i, (module, use_input) in enumerate(targets):
            # bound methods, not closures over self: a deep copy (EMA, SWA) or a pickled model
            # gets hooks that feed its own branches
            if use_input:
                module.register_forward_pre_hook(functools.partial(self._keep_input, i))
            else:
                module.register_forward_hook(functools.partial(self._keep_output, i))

    def _settle_reads(
        self, branches: Sequence[BranchSpec], targets: list[tuple[nn.Module, bool]]
    ) -> list[FeatureRead]:
        """How each branch reads its tensor (``ssal.features.settle_read``), from one probe
        pass; a branch given ``in_channels`` of an NCHW position needs no probe."""
        wants = [reads_tokens(b.layout) for b in branches]
        known = [
            b.in_channels is not None and parse_position(b.position).fmt in (None, "nchw")
            for b in branches
        ]
        shapes = self._probe_shapes(targets) if not all(known) else []
        reads = []
        for i, b in enumerate(branches):
            if known[i]:
                reads.append(FeatureRead(b.position, "nchw", int(b.in_channels), tokens=wants[i]))
                continue
            read = settle_read(self.backbone, b.position, shapes[i], self.input_size[1:], wants[i])
            if b.in_channels is not None and b.in_channels != read.channels:
                raise UserError(
                    f"branch at {b.position!r} was given in_channels={b.in_channels} but its "
                    f"tensor of shape {tuple(shapes[i])} has {read.channels} channels"
                )
            reads.append(read)
        return reads

    # The hooks keep a tensor only while ``forward`` runs the backbone: modules that gradient
    # checkpointing runs again in the backward pass fire their hooks again, and those calls
    # must neither replace what the branches read nor keep feature maps alive after the step.
    def _keep_input(self, i: int, _module: nn.Module, args: tuple) -> None:
        if self._reading[0]:
            self._taps[i] = args[0]

    def _keep_output(self, i: int, _module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        if self._reading[0]:
            self._taps[i] = output

    @torch.no_grad()
    def _probe_shapes(self, targets: list[tuple[nn.Module, bool]]) -> list[torch.Size]:
        """Run the backbone once on a dummy input to read the feature-map shapes."""
        shapes: list[torch.Size | None] = [None] * len(targets)
        handles = []
        for i, (module, use_input) in enumerate(targets):

            def grab(*hook_args: object, i: int = i, use_input: bool = use_input) -> None:
                t = hook_args[1][0] if use_input else hook_args[2]  # type: ignore[index]
                shapes[i] = t.shape if isinstance(t, torch.Tensor) else torch.Size([])

            hook = module.register_forward_pre_hook if use_input else module.register_forward_hook
            handles.append(hook(grab))
        param = next(self.backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            self.backbone(torch.zeros(1, *self.input_size, device=device))
        finally:
            self.backbone.train(was_training)
            for h in handles:
                h.remove()
        missing = [self.positions[i] for i, s in enumerate(shapes) if s is None]
        if missing:
            raise UserError(f"branch positions {missing} are never called in the forward pass")
        return shapes  # type: ignore[return-value]

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def group_indices(self) -> list[torch.Tensor]:
        """Per branch, the ``(C,)`` long tensor mapping each class to its group."""
        return [getattr(self, group_index_name(i)) for i in range(self.num_branches)]

    def forward(self, x: torch.Tensor) -> SSALOutput:
        if not self.branches:
            return SSALOutput(self.backbone(x), ())
        self._reading[0] = True
        logits = self.backbone(x)
        self._reading[0] = False
        taps = list(self._taps)
        for i in range(len(self._taps)):
            self._taps[i] = None  # do not keep feature maps alive between calls
        missing = [self.positions[i] for i, t in enumerate(taps) if t is None]
        if missing:
            raise RuntimeError(f"branch positions {missing} were not called in this forward pass")
        return SSALOutput(
            logits,
            tuple(
                b(r.read(t))  # type: ignore[arg-type]
                for b, r, t in zip(self.branches, self.reads, taps, strict=True)
            ),
        )

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: ``backbone``, ``branches`` and ``total``."""
        backbone = sum(p.numel() for p in self.backbone.parameters())
        branches = sum(p.numel() for p in self.branches.parameters())
        return {"backbone": backbone, "branches": branches, "total": backbone + branches}
