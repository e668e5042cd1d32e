import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def require(available: bool, what: str) -> None:
    """Skip a test whose system package is missing, except on CI, where the setup script
    installs it (Debian's dataset-fashion-mnist, chromium): there its absence fails the test,
    so a broken install cannot pass as a skip."""
    if available:
        return
    message = f"{what} is not installed (scripts/setup.sh installs it where apt is available)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def have_fashion_mnist() -> bool:
    from ssal.data import DEFAULT_FASHION_MNIST_DIR

    return (Path(DEFAULT_FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").is_file()


def have_chromium() -> bool:
    return shutil.which("chromium") is not None


def modulo_groupings(num_classes: int, sizes=(2, 3, 5)) -> list[np.ndarray]:
    return [np.arange(num_classes) % g for g in sizes]


def quick_trainer(max_steps: int, **kwargs):  # noqa: ANN201 - a lightning.Trainer
    """A CPU Trainer for a few steps: no logger, checkpoints or model summary."""
    import lightning as L

    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    return L.Trainer(max_steps=max_steps, **{**defaults, **kwargs})


def write_tiny_config(
    path: Path,
    data_dir: Path | None = None,
    trainer: dict | None = None,
    data: dict | None = None,
    model: dict | None = None,
) -> Path:
    """A 2-epoch CPU ``ssal fit`` config of tiny-wrn on (fake) CIFAR-100 files in ``data_dir``;
    ``trainer``, ``data`` (init_args) and ``model`` entries (``{"optim": {"lr": 0.1}}``: by
    group) add to or replace the defaults."""
    import yaml

    init = {"dataset": "cifar100", "batch_size": 32, "heldout": 0.2, **(data or {})}
    if data_dir is not None:
        init["data_dir"] = str(data_dir)
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **(trainer or {}),
        },
        "data": {"class_path": "ssal.data.InMemoryDataModule", "init_args": init},
        "model": {"network": {"name": "tiny-wrn"}, "optim": {"lr": 0.05, "warmup_epochs": 1}},
    }
    for key, value in (model or {}).items():  # a group's entries add to its defaults
        merged = {**config["model"].get(key, {}), **value} if isinstance(value, dict) else value
        config["model"][key] = merged
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_label_file(path: Path, assignment) -> Path:
    """A grouping in the authors' text format: the group of class c on line c, written as
    numpy.savetxt writes numbers (``1.400000000000000000e+01``)."""
    path.write_text("".join(f"{float(g):.18e}\n" for g in assignment))
    return path


def pytest_addoption(parser) -> None:  # noqa: ANN001 - pytest's Parser
    parser.addoption(
        "--fuzz-cases",
        type=int,
        default=None,
        help="cases per reader and mutation kind in tests/test_fuzz.py (SSAL_FUZZ_CASES)",
    )


@pytest.fixture(scope="session")
def fuzz_cases(request) -> int:
    from tests.fuzzing import fuzz_cases as cases

    return cases(request.config)
