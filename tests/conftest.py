import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def modulo_groupings(num_classes: int, sizes=(2, 3, 5)) -> list[np.ndarray]:
    return [np.arange(num_classes) % g for g in sizes]


def quick_trainer(max_steps: int, **kwargs):  # noqa: ANN201 - a lightning.Trainer
    """A CPU Trainer for a few steps: no logger, checkpoints or model summary."""
    import lightning as L

    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    return L.Trainer(max_steps=max_steps, **{**defaults, **kwargs})
