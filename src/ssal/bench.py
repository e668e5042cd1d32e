"""``ssal bench``: how fast ``ssal fit`` trains a model, against a plain PyTorch loop.

Our path is the real one: ``SSALModule`` under Lightning's ``Trainer`` with the in-memory
datamodule (uint8 batches, augmentation and normalisation on the device), with the chosen
precision, ``torch.compile`` and channels_last. The reference is what a user writes by hand:
fp32, eager, a ``DataLoader`` over uint8 images with torchvision transforms on the CPU, plain
SGD. Both see synthetic images of the model's input size, or, with ``image_folder``, the
JPEG files of an image folder (ours: ``ImageFolderDataModule``, decoding on the CPU workers or
on the device; the reference: torchvision's ``ImageFolder`` with per-sample transforms), so
the rate includes decoding. FLOPs are counted with ``torch.utils.flop_counter``; MFU is
achieved FLOP/s over the device's peak for the precision.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from ssal.args import GroupingArgs, NetworkArgs, OptimArgs, SpeedArgs
from ssal.backbones import create_model, default_groupings, get_entry
from ssal.data.arrays import ImageArrays
from ssal.data.in_memory import InMemoryDataModule
from ssal.errors import UserError
from ssal.grouping import Grouping
from ssal.loss import SSALLoss
from ssal.train import SSALModule
from ssal.trainer import build_trainer

__all__ = ["PEAK_TFLOPS", "bench_rows", "count_flops", "run_bench"]

# Dense peak TFLOP/s by device name fragment: (bf16, tf32, fp32).
PEAK_TFLOPS = {
    "H200": (989.0, 494.0, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100": (989.0, 494.0, 67.0),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "A10G": (70.0, 35.0, 31.2),
    "L4": (121.0, 60.0, 30.3),
    "RTX 4090": (165.0, 82.6, 82.6),
    "V100": (125.0, 15.7, 15.7),
    "T4": (65.0, 8.1, 8.1),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(
    model: torch.nn.Module, loss_fn: SSALLoss, x: torch.Tensor, y: torch.Tensor
) -> dict:
    """FLOPs per image of the forward pass and of forward + backward (``x`` is one batch)."""
    model.train()
    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as full:
        out = model(x)
        loss_fn(out, y).total.backward()
    model.zero_grad(set_to_none=True)
    n = x.shape[0]
    return {"forward": fwd.get_total_flops() / n, "train": full.get_total_flops() / n}


def _peak_flops(
    device: torch.device, precision: str, peak_tflops: float | None
) -> tuple[float, str]:
    if peak_tflops:
        return peak_tflops * 1e12, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (bf16, tf32, fp32) in PEAK_TFLOPS.items():
            if fragment in name:
                if precision.startswith("bf16"):
                    return bf16 * 1e12, f"table ({fragment} bf16 dense)"
                tf32_on = torch.backends.cuda.matmul.allow_tf32
                return (
                    tf32 if tf32_on else fp32
                ) * 1e12, f"table ({fragment} {'tf32' if tf32_on else 'fp32'})"
    # Unknown device: a large matrix product measures what it can do.
    dtype = (
        torch.bfloat16 if precision.startswith("bf16") and device.type == "cuda" else torch.float32
    )
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t), f"measured {n}x{n} matmul"


class _Timer(Callback):
    """Wall time of training steps ``warmup`` .. end, with one device sync at each boundary."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup and self.start is None:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        _sync(pl_module.device)
        self.end = time.perf_counter()


def _profiler(folder: Path, device: torch.device, warmup: int, steps: int) -> Any:
    """Lightning's PyTorch profiler over ``steps`` training steps after ``warmup``: a table
    of the most expensive operators (``*.txt``) and a trace for Perfetto/Chrome (``*.json``).
    """
    from lightning.pytorch.profilers import PyTorchProfiler

    return PyTorchProfiler(
        dirpath=folder,
        filename="profile",
        schedule=torch.profiler.schedule(wait=max(0, warmup - 1), warmup=1, active=steps),
        sort_by_key="cuda_time_total" if device.type == "cuda" else "cpu_time_total",
        row_limit=40,
        record_module_names=False,  # module hooks would break the compiled graph
        export_to_chrome=True,
    )


class _SyntheticData(InMemoryDataModule):
    """The in-memory datamodule over given arrays (no files)."""

    def __init__(self, arrays: ImageArrays, batch_size: int, device_resident: bool | None) -> None:
        super().__init__(
            "cifar100",
            batch_size=batch_size,
            eval_batch_size=batch_size,
            heldout=0,
            device_resident=device_resident,
        )
        self._given = arrays

    def setup(self, stage: str | None = None) -> None:
        if self.train_arrays is None:
            self.train_arrays = self.test_arrays = self._given
            self.heldout_arrays = self._given.subset(torch.arange(0))
            c = self._given.images.shape[1]
            self._mean, self._std = [0.5] * c, [0.25] * c


def _synthetic(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> ImageArrays:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    return ImageArrays(
        images, labels[torch.randperm(n, generator=g)], [str(i) for i in range(classes)]
    )


@dataclass(frozen=True)
class _Setup:
    """What every timed run of one ``ssal bench`` call shares."""

    model: str
    classes: int
    data: ImageArrays | None  # synthetic images, or None for an image folder
    batch: int
    steps: int
    warmup: int
    device: torch.device
    precision: str
    compile: bool
    channels_last: bool
    compile_mode: str | None
    shape: tuple[int, int, int] = (3, 32, 32)
    layouts: tuple[str, ...] | None = None
    image_folder: str | None = None
    decode_on_device: bool = False
    workers: int = 0

    def datamodule(self) -> Any:
        """Our path's datamodule: the synthetic arrays in memory, or the image folder."""
        if self.image_folder is None:
            assert self.data is not None
            return _SyntheticData(self.data, self.batch, None)
        from ssal.data.image_folder import ImageFolderDataModule

        return ImageFolderDataModule(
            self.image_folder,
            image_size=self.shape[-1],
            batch_size=self.batch,
            eval_batch_size=self.batch,
            num_workers=self.workers,
            decode_on_device=self.decode_on_device,
        )


def _ours(
    setup: _Setup,
    groupings: list[Grouping] | None,
    measure_eval: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Our path: ``SSALModule`` under Lightning's ``Trainer`` with the in-memory datamodule
    (or the image folder's). With ``profile``, ``events`` holds the profiler's events."""
    batch, device, precision = setup.batch, setup.device, setup.precision
    steps = min(setup.steps, 5) if profile else setup.steps
    module = SSALModule(
        NetworkArgs(
            setup.model, layouts=list(setup.layouts) if setup.layouts and groupings else None
        ),
        setup.classes,
        setup.shape[0],
        GroupingArgs(groupings),
        optim=OptimArgs(lr=0.01, warmup_epochs=1),
        speed=SpeedArgs(setup.compile, setup.compile_mode, setup.channels_last),
    )
    timer = _Timer(setup.warmup)
    trainer = build_trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=setup.warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        benchmark=device.type == "cuda",  # cuDNN picks kernels for each conv shape by timing
        profiler=_profiler(profile, device, setup.warmup, steps) if profile else None,
    )
    dm = setup.datamodule()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, dm)
    seconds = timer.end - timer.start
    result: dict[str, Any] = {
        "train_images_per_s": timer.steps * batch / seconds,
        "train_step_ms": 1000 * seconds / timer.steps,
        "peak_memory_bytes": (
            torch.cuda.max_memory_allocated(device)
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ),
    }
    if profile:
        result["events"] = trainer.profiler.function_events
    if measure_eval:
        result["eval_images_per_s"] = _eval_speed(setup, module, dm)
    return result


def _eval_speed(setup: _Setup, module: SSALModule, dm: Any) -> float:
    """Evaluation images/s of the same network (compiled when asked) in eval mode, without
    gradients, on one prepared batch (decoding not included)."""
    device, batch, warmup, steps = setup.device, setup.batch, setup.warmup, setup.steps
    module.to(device)  # Lightning moves the module back to the CPU when fit ends
    net = module.forward_net().eval() if setup.compile else module.net.eval()
    dtype = torch.bfloat16 if setup.precision.startswith("bf16") else None
    if setup.data is not None:
        images = setup.data.images[:batch]
    else:
        images = next(iter(dm.val_dataloader()))[0]
    x = dm.prepare_batch(images.to(device), False)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                t = time.perf_counter()
            net(x)
        _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t)


class _PerSample(Dataset):
    """uint8 images one at a time through torchvision transforms, as a hand-written loop does."""

    def __init__(self, arrays: ImageArrays, transform: Any) -> None:
        self.arrays, self.transform = arrays, transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.arrays.images[i]), self.arrays.labels[i]


def _reference_loader(setup: _Setup, workers: int) -> DataLoader:
    """What a hand-written loop loads with: per-sample torchvision transforms on the CPU
    (shift/flip of uint8 arrays, or ImageNet's decode + RandomResizedCrop + flip)."""
    from torchvision.transforms import v2

    c, h, _ = setup.shape
    if setup.image_folder is not None:
        from torchvision.datasets import ImageFolder

        transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(h, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        dataset: Dataset = ImageFolder(str(Path(setup.image_folder) / "train"), transform)
    else:
        assert setup.data is not None
        transform = v2.Compose(
            [
                v2.RandomCrop(h, padding=min(5, h // 4), padding_mode="reflect"),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * c, [0.25] * c),
            ]
        )
        dataset = _PerSample(setup.data, transform)
    return DataLoader(
        dataset,
        batch_size=setup.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=setup.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _reference(setup: _Setup, groupings: list | None, workers: int) -> float:
    """Training images/s of a plain PyTorch loop: fp32, eager, plain SGD."""
    device, warmup, steps = setup.device, setup.warmup, setup.steps
    loader = _reference_loader(setup, workers)
    layouts = list(setup.layouts) if setup.layouts and groupings else None
    model = create_model(
        setup.model, setup.classes, groupings, in_channels=setup.shape[0], layouts=layouts
    )
    model = model.to(device).train()
    loss_fn = SSALLoss(groupings or [], [1.0] * len(groupings or [])).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    done, t = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).total.backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    return steps * setup.batch / (time.perf_counter() - t)


def run_bench(
    model: str,
    ssal: bool = False,
    batch_size: int = 128,
    steps: int = 30,
    warmup: int = 10,
    device: str = "cpu",
    precision: str = "32",
    compile: bool = False,
    channels_last: bool = False,
    peak_tflops: float | None = None,
    num_classes: int | None = None,
    reference: bool = True,
    reference_workers: int | None = None,
    compile_mode: str | None = None,
    profile: str | Path | None = None,
    layouts: list[str] | None = None,
    input_size: tuple[int, int, int] | None = None,
    image_folder: str | Path | None = None,
    decode_on_device: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Measure one model; returns the JSON document of ``ssal bench``.

    ``profile``: a folder for operator tables and traces of a few extra, untimed steps of our
    path (``model/`` and, with ``ssal``, ``backbone/``), and ``kernels.txt``: the most
    expensive kernels of one SSAL step and the branches' part of each (``profile_summary``
    in the result). ``layouts``: branch layouts instead of the model's own; ``input_size``:
    ``(C, H, W)`` of the synthetic images. ``image_folder``: train on the JPEGs of
    ``DIR/train/<class>/`` (``DIR/val/`` for evaluation) with ``workers`` loader processes
    (default: one per core), decoding on the device with ``decode_on_device``.
    """
    setup, groupings = _make_setup(
        model, ssal, batch_size, steps, warmup, device, precision, compile, channels_last,
        num_classes, compile_mode, layouts, input_size, image_folder, decode_on_device, workers,
    )  # fmt: skip
    result = _measure(setup, groupings, peak_tflops)
    if profile:
        result.update(_profile(setup, groupings, Path(profile), result["train_step_ms"]))
    result["ssal"] = ssal
    result["layouts"] = list(layouts) if layouts else None
    result["image_folder"] = str(image_folder) if image_folder else None
    result["decode_on_device"] = decode_on_device if image_folder else None
    result.update(_reference_speed(setup, groupings, reference, reference_workers, result))
    entry = get_entry(model)
    if entry.paper.run and not layouts and not input_size:
        epochs, n_train, n_test = entry.paper.run
        epoch_s = n_train / result["train_images_per_s"] + n_test / result["eval_images_per_s"]
        result["paper_run"] = {"epochs": epochs, "train_images": n_train, "test_images": n_test}
        result["projected_epoch_s"] = epoch_s
        result["projected_run_hours"] = epochs * epoch_s / 3600
    return result


def _make_setup(
    model: str,
    ssal: bool,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    compile: bool,
    channels_last: bool,
    num_classes: int | None,
    compile_mode: str | None,
    layouts: list[str] | None,
    input_size: tuple[int, int, int] | None,
    image_folder: str | Path | None,
    decode_on_device: bool,
    workers: int | None,
) -> tuple[_Setup, list | None]:
    """Check the options; the shared setup of every timed run, and the placeholder groupings."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    precision = {"32": "32-true", "bf16": "bf16-mixed"}.get(precision, precision)
    if precision not in ("32-true", "bf16-mixed"):
        raise UserError(f"precision must be 32 or bf16-mixed, got {precision!r}")
    if steps < 1 or warmup < 1 or batch < 1:
        raise UserError("steps, warmup and batch size must be >= 1")
    entry = get_entry(model)
    shape = tuple(input_size or entry.network.input_size)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input size must be C H W, all >= 1, got {shape}")
    classes = num_classes or (
        1000 if model.endswith("imagenet") else 10 if model == "small-cnn" else 100
    )
    if image_folder is not None:
        train = Path(image_folder) / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"image folder {train} not found (want train/<class>/*)")
        classes = sum(1 for d in train.iterdir() if d.is_dir())
    groupings = default_groupings(classes, entry.group_sizes(classes)) if ssal else None
    if layouts and groupings and len(layouts) not in (1, len(groupings)):
        raise UserError(f"give 1 or {len(groupings)} branch layouts, got {len(layouts)}")
    from ssal.data.image_folder import default_workers

    setup = _Setup(
        model, classes,
        None if image_folder else _synthetic(batch * min(warmup + steps, 40), shape, classes),
        batch, steps, warmup, dev, precision, compile, channels_last,
        compile_mode if compile else None, shape,  # type: ignore[arg-type]
        tuple(layouts) if layouts else None,
        str(image_folder) if image_folder else None, decode_on_device,
        default_workers(limit=64) if workers is None else workers,
    )  # fmt: skip
    return setup, groupings


def _profile(
    setup: _Setup, groupings: list[Grouping] | None, folder: Path, step_ms: float
) -> dict[str, Any]:
    """Profile a few steps of the SSAL model (and the bare backbone): tables and traces in
    ``folder/{model,backbone}/``, the kernel summary in ``folder/kernels.txt``."""
    from ssal.files import write_text
    from ssal.profiling import profile_summary, summary_table

    parts = [("model", groupings)] + ([("backbone", None)] if groupings else [])
    events = {}
    for part, g in parts:
        events[part] = _ours(setup, g, measure_eval=False, profile=folder / part)["events"]
    summary = profile_summary(events["model"], events.get("backbone"))
    summary["busy_fraction"] = summary["kernel_ms_per_step"] / step_ms
    title = (
        f"{setup.model}{' +SSAL' if groupings else ''}, {setup.device.type}, {setup.precision}, "
        f"batch {setup.batch}{', compile' if setup.compile else ''}"
        f"{f' ({setup.compile_mode})' if setup.compile_mode else ''}"
        f"{', channels_last' if setup.channels_last else ''}: one training step, "
        f"{step_ms:.2f} ms measured without the profiler"
    )
    write_text(folder / "kernels.txt", summary_table(summary, title))
    return {
        "profile": {part: str(folder / part) for part, _ in parts},
        "profile_summary": summary,
    }


def _measure(
    setup: _Setup, groupings: list[Grouping] | None, peak_tflops: float | None
) -> dict[str, Any]:
    """FLOPs, parameters, our speed (and the bare backbone's, for the branches' share), MFU."""
    dev, classes, name = setup.device, setup.classes, setup.model
    layouts = list(setup.layouts) if setup.layouts and groupings else None
    build = dict(in_channels=setup.shape[0], layouts=layouts)
    flops_model = create_model(name, classes, groupings, **build).to(dev)
    loss_fn = SSALLoss(groupings or [], [1.0] * len(groupings or [])).to(dev)
    xb = torch.randn(min(setup.batch, 8), *setup.shape, device=dev)
    yb = torch.arange(xb.shape[0], device=dev) % classes
    flops = count_flops(flops_model, loss_fn, xb, yb)
    del flops_model
    params = create_model(name, classes, groupings, **build).num_parameters()
    ours = _ours(setup, groupings)
    peak, source = _peak_flops(dev, setup.precision, peak_tflops)
    result: dict[str, Any] = {
        "model": name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "device_type": dev.type,
        "torch": torch.__version__,
        "precision": setup.precision,
        "compile": setup.compile,
        "compile_mode": setup.compile_mode,
        "channels_last": setup.channels_last,
        "batch_size": setup.batch,
        "steps": setup.steps,
        "warmup_steps": setup.warmup,
        "num_classes": classes,
        "input_size": list(setup.shape),
        "params": params["total"],
        "params_branches": params["branches"],
        **ours,
        "flops_per_image_forward": flops["forward"],
        "flops_per_image_train": flops["train"],
        "peak_flops": peak,
        "peak_source": source,
        "achieved_flops": ours["train_images_per_s"] * flops["train"],
    }
    result["mfu"] = result["achieved_flops"] / peak
    result["ssal_overhead"] = 0.0
    if groupings:
        base = _ours(setup, None)
        result["baseline_train_images_per_s"] = base["train_images_per_s"]
        result["baseline_train_step_ms"] = base["train_step_ms"]
        # Share of the SSAL step spent on the branches.
        result["ssal_overhead"] = 1 - base["train_step_ms"] / ours["train_step_ms"]
    return result


def _reference_speed(
    setup: _Setup,
    groupings: list | None,
    reference: bool,
    workers: int | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The plain PyTorch loop's speed and ours relative to it."""
    if not reference:
        return {"reference_train_images_per_s": None, "speedup": None}
    if workers is None:
        if setup.image_folder is not None:
            workers = setup.workers  # decoding JPEGs: as many workers as ours
        else:
            workers = min(8, (os.cpu_count() or 2) // 2) if setup.device.type == "cuda" else 0
    ref = _reference(setup, groupings, workers)
    return {
        "reference_train_images_per_s": ref,
        "reference_workers": workers,
        "speedup": result["train_images_per_s"] / ref,
    }


def bench_rows(results: list[dict]) -> list[tuple[str, ...]]:
    """Table rows for the terminal."""
    rows = []
    for r in results:
        rows.append(
            (
                r["model"] + (" +SSAL" if r["ssal"] else ""),
                r["device"],
                r["precision"] + (" compile" if r["compile"] else ""),
                f"{r['train_images_per_s']:.0f}",
                f"{r['eval_images_per_s']:.0f}",
                f"{100 * r['mfu']:.1f}%",
                f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                f"{100 * r['ssal_overhead']:.1f}%" if r["ssal"] else "-",
                f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
            )
        )
    return rows
