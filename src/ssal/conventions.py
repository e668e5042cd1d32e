"""How a network's layers are made: batch norm settings, convolution biases and padding, weight
initialisers, and the two ways of counting parameters.

The authors built their CIFAR models in Keras (TensorFlow 1.15) and their ImageNet model in
PyTorch. A model rebuilt here behaves like theirs only with their framework's conventions, which
differ from PyTorch's defaults in ways that change training:

- Keras ``BatchNormalization`` defaults to ``epsilon=1e-3`` and a moving average that keeps 0.99
  of the old statistics (PyTorch ``momentum=0.01``); PyTorch's defaults are 1e-5 and 0.1.
- Keras ``Conv2D`` and ``Dense`` layers have biases, initialised to zero.
- Keras ``padding="same"`` puts the odd pixel of a strided convolution's padding at the bottom
  and right; PyTorch pads both sides alike (``"tf"`` padding below reproduces Keras').
- Keras initialisers: ``he_normal`` (a normal truncated at two standard deviations, scaled so
  that the standard deviation is ``sqrt(2 / fan_in)``), ``glorot_uniform`` (Keras' default),
  ``orthogonal``.
- Keras counts batch norm's moving mean and variance among a model's parameters; PyTorch counts
  what is trained (``keras_parameter_count`` and ``torch_parameter_count``).

A ``Style`` bundles these choices; backbones take one, and branch layouts name one
(``"keras: cbr(128,5,2) ..."``, see ``ssal.layouts``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssal.errors import UserError

__all__ = [
    "INITIALIZERS",
    "KERAS_NORM",
    "Norm",
    "Style",
    "TFSameConv2d",
    "initialize",
    "keras_parameter_count",
    "torch_parameter_count",
]

# scipy.stats.truncnorm.std(a=-2, b=2): Keras divides by it so the truncated normal keeps the
# standard deviation asked for
_TRUNCATED_STD = 0.87962566103423978


@dataclass(frozen=True)
class Norm:
    """Batch norm settings: ``eps`` and ``momentum`` in PyTorch's convention (the weight of each
    new batch's statistics; Keras' ``momentum=m`` is ``1 - m`` here)."""

    eps: float = 1e-5
    momentum: float = 0.1

    def __call__(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)


KERAS_NORM = Norm(eps=1e-3, momentum=0.01)
"""Keras' ``BatchNormalization()`` defaults: epsilon 1e-3, moving-average momentum 0.99."""


class TFSameConv2d(nn.Conv2d):
    """A convolution with Keras/TensorFlow ``padding="same"``: the output has ``ceil(n / s)``
    pixels per side and, where the padding is odd, the extra pixel goes to the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        sizes = zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True)
        for n, k, s in sizes:
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _he_normal(w: torch.Tensor) -> None:
    """Keras' ``he_normal``: a normal of standard deviation ``sqrt(2 / fan_in) / 0.8796``
    truncated at two of those standard deviations (so ``sqrt(2 / fan_in)`` remains), drawn by
    inverting the normal's distribution function (fast; torch's own draws by rejection)."""
    std = math.sqrt(2.0 / w[0].numel()) / _TRUNCATED_STD
    edge = math.erf(2 / math.sqrt(2))  # 2 * Phi(2) - 1
    with torch.no_grad():
        w.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-2 * std, 2 * std)


def _orthogonal(w: torch.Tensor) -> None:
    """A uniformly random (semi-)orthogonal matrix, as Keras' ``orthogonal`` and torch's
    ``orthogonal_`` draw it: the Q factor (R's diagonal positive) of a Gaussian matrix, here by
    Cholesky QR in float64 (LAPACK's Householder QR crawls when threads share busy cores; a
    Gaussian matrix is well enough conditioned for one pass). Rows (outputs) are orthonormal
    where there are fewer of them than inputs, columns otherwise."""
    rows, cols = w.shape[0], w[0].numel()
    a = torch.randn(max(rows, cols), min(rows, cols), dtype=torch.float64)
    r = torch.linalg.cholesky(a.T @ a, upper=True)
    q = torch.linalg.solve_triangular(r, a, upper=True, left=False)
    with torch.no_grad():
        w.copy_((q if rows >= cols else q.T).reshape(w.shape))


INITIALIZERS: dict[str, Callable[[torch.Tensor], object] | None] = {
    "torch": None,  # PyTorch's default, as the layer was constructed
    "kaiming_fan_out": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    "he_normal": _he_normal,
    "glorot_uniform": nn.init.xavier_uniform_,
    "orthogonal": _orthogonal,
}
"""Weight initialisers by name; every one but ``torch`` sets biases to zero (as Keras does)."""


def _init_layer(layer: nn.Module, scheme: str) -> None:
    if scheme not in INITIALIZERS:
        raise UserError(f"unknown initialiser {scheme!r}; known: {', '.join(INITIALIZERS)}")
    fn = INITIALIZERS[scheme]
    if fn is None or layer.weight.is_meta:
        return
    fn(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def initialize(module: nn.Module, conv: str = "torch", linear: str = "torch") -> nn.Module:
    """(Re)initialise every convolution and linear layer inside ``module``; returns it."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            _init_layer(m, conv)
        elif isinstance(m, nn.Linear):
            _init_layer(m, linear)
    return module


@dataclass(frozen=True)
class Style:
    """The conventions a network's layers are made with.

    ``norm``: batch norm settings; ``conv_bias``: convolutions carry biases; ``same``: how
    "same" padding is done for strided convolutions (``"torch"``: ``k // 2`` on every side,
    ``"tf"``: Keras'); ``conv_init`` and ``linear_init``: names in ``INITIALIZERS``.
    """

    norm: Norm = field(default_factory=Norm)
    conv_bias: bool = False
    same: Literal["torch", "tf"] = "torch"
    conv_init: str = "torch"
    linear_init: str = "torch"

    def __post_init__(self) -> None:
        for scheme in (self.conv_init, self.linear_init):
            if scheme not in INITIALIZERS:
                known = ", ".join(INITIALIZERS)
                raise UserError(f"unknown initialiser {scheme!r}; known: {known}")

    def conv(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | None = None,
    ) -> nn.Conv2d:
        """A convolution; ``padding=None`` means "same" (for stride 1: the input's size)."""
        k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if padding is None and self.same == "tf" and stride > 1:
            return TFSameConv2d(c_in, c_out, k, stride, 0, bias=self.conv_bias)
        pad = (k[0] // 2, k[1] // 2) if padding is None else padding
        return nn.Conv2d(c_in, c_out, k, stride, pad, bias=self.conv_bias)

    def initialize(self, module: nn.Module) -> nn.Module:
        """Initialise ``module``'s convolution and linear layers with this style's schemes."""
        return initialize(module, self.conv_init, self.linear_init)


def torch_parameter_count(module: nn.Module) -> int:
    """Parameters as PyTorch counts them: every trainable tensor."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def keras_parameter_count(module: nn.Module) -> int:
    """Parameters as Keras counts them (the convention of the paper's table): the trainable
    ones plus batch norm's moving mean and variance."""
    stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    )
    return torch_parameter_count(module) + stats
