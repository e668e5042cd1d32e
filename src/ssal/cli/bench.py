"""``ssal bench``: training and evaluation throughput, FLOPs, MFU, speedup over a plain loop."""

from __future__ import annotations

import argparse

from ssal.cli.common import show_table
from ssal.errors import UserError
from ssal.files import write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="training/eval throughput, FLOPs, MFU, speedup",
        description="Time ssal fit's training step (and evaluation) of a model on synthetic "
        "data, next to a plain PyTorch loop; FLOPs, MFU, memory, the branches' share.",
    )
    p.add_argument("--model", required=True, help="a registered model (see ssal models)")
    p.add_argument("--ssal", action="store_true", help="with branches (and their overhead)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per step")
    p.add_argument("--steps", type=int, default=30, metavar="N", help="timed steps")
    p.add_argument(
        "--warmup", type=int, default=10, metavar="N", help="untimed steps first (compilation)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--precision", default="32", choices=["32", "bf16-mixed", "bf16"], help="training precision"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode (the last three tune kernels; the middle two add CUDA graphs)",
    )
    p.add_argument("--profile", metavar="DIR", help="also write operator tables and traces here")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument(
        "--peak-tflops", type=float, help="device peak for MFU (default: the datasheet's)"
    )
    p.add_argument(
        "--num-classes", type=int, metavar="N", help="classes (default: the model's dataset's)"
    )
    p.add_argument("--no-reference", action="store_true", help="skip the plain PyTorch loop")
    p.add_argument(
        "--reference-workers", type=int, metavar="N", help="DataLoader workers of the plain loop"
    )
    p.add_argument("--json", metavar="FILE", help="also write the result to this JSON file")
    p.add_argument(
        "--layouts",
        nargs="+",
        metavar="LAYOUT",
        help="branch layouts instead of the model's (one, or one per branch; e.g. "
        "'cbr(128,3) inception(1,8) gap'; default: the registry's)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="size of the synthetic images (default: the model's, e.g. 3 32 32)",
    )
    p.add_argument(
        "--image-folder",
        metavar="DIR",
        help="train on the images of DIR/train/<class>/ (evaluate on DIR/val/) with "
        "ImageFolderDataModule, decoding included (default: synthetic images in memory)",
    )
    p.add_argument(
        "--decode-on-device",
        action="store_true",
        help="with --image-folder: decode the JPEGs on the device (default: CPU workers)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --image-folder: loader processes, ours and the reference's "
        "(default: one per CPU core)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssal.bench import bench_rows, run_bench

    if args.compile_mode and not args.compile:
        raise UserError("--compile-mode needs --compile")
    if (args.decode_on_device or args.workers is not None) and not args.image_folder:
        raise UserError("--decode-on-device and --workers need --image-folder")
    torch.set_float32_matmul_precision("high")  # TF32 where the GPU has it
    result = run_bench(
        args.model,
        ssal=args.ssal,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        peak_tflops=args.peak_tflops,
        num_classes=args.num_classes,
        reference=not args.no_reference,
        reference_workers=args.reference_workers,
        compile_mode=args.compile_mode,
        profile=args.profile,
        layouts=args.layouts,
        input_size=tuple(args.input_size) if args.input_size else None,
        image_folder=args.image_folder,
        decode_on_device=args.decode_on_device,
        workers=args.workers,
    )
    if args.json:
        write_json(args.json, result)
    if "profile_summary" in result:
        from ssal.profiling import summary_table

        print(summary_table(result["profile_summary"]))
    cols = ("model", "device", "precision", "train img/s", "eval img/s", "MFU", "speedup")
    show_table("ssal bench", (*cols, "branches", "memory"), bench_rows([result]))
    return 0
