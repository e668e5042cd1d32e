"""Backbone weights from a file: a state dict or safetensors, for fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssal.errors import UserError

__all__ = ["load_backbone_weights"]

_PREFIXES = ("net.backbone.", "backbone.", "module.", "model.")


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a state dict (``.safetensors``, or a ``torch.save`` file of tensors; a Lightning
    checkpoint's ``state_dict`` too) into ``backbone``: common prefixes are stripped, and a
    classifier whose size differs (another number of classes) is left fresh. Returns counts
    of ``loaded`` and ``skipped`` tensors; anything else that does not fit is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many kinds for a bad file
        raise UserError(
            f"{path}: not a loadable state dict ({' '.join(str(e).split())[:120]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a dict of tensors (a state dict)")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    own = backbone.state_dict()
    head = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)][-1:]
    skipped = [
        k
        for k, v in state.items()
        if k in own and own[k].shape != v.shape and any(k.startswith(h + ".") for h in head)
    ]
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in own if k not in state and not any(k.startswith(h + ".") for h in head)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong),
            )
            if keys
        )
        raise UserError(f"{path}: weights do not fit the backbone ({detail})")
    backbone.load_state_dict(state, strict=False)
    return {"loaded": len(state), "skipped": len(skipped)}
