"""The ``ssal`` command: one function per subcommand.

Errors a user can cause end in one line on stderr and exit code 2 (``--debug`` shows the
traceback). Training subcommands hand over to Lightning's CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssal.files import write_json

__all__ = ["main"]

PAPER_PARAMS = {  # millions, from the paper's table: (baseline, with SSAL branches)
    "resnet50": (23.8, 28.9),
    "sewrn16-8": (11.1, 14.9),
    "wrn28-10": (36.6, 38.2),
    "densenet190-40": (26.1, 38.3),
}


def _pct(v: float | None) -> str:
    """A fraction as a percentage; ``-`` for None or NaN (nothing to measure)."""
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _mean_std(m: dict, scale: float = 100.0) -> str:
    """``mean ± std`` of a ``study.mean_std`` dict, scaled (100: fractions to points)."""
    if not m["n"]:
        return "-"
    if m["n"] == 1:
        return f"{scale * m['mean']:.2f}"
    return f"{scale * m['mean']:.2f} ± {scale * m['std']:.2f}"


class UserError(Exception):
    """An error the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UserError(f"{self.prog}: {message} (see --help)")


def _console(stderr: bool = False):  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# ---------------------------------------------------------------------------------- models
def model_table(num_classes: int = 100, groups: Sequence[int] = (20, 33, 50)) -> list[dict]:
    """Every registered model with parameter counts as baseline and with SSAL branches."""
    import torch

    from ssal.backbones.registry import _default_groupings, create_model, get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        with torch.device("meta"):  # count without allocating or initialising weights
            base = create_model(name, num_classes).num_parameters()["total"]
            ssal = create_model(name, num_classes, _default_groupings(num_classes, groups))
        counts = ssal.num_parameters()
        row = {
            "name": name,
            "description": entry.description,
            "input_size": list(entry.input_size),
            "params_baseline": base,
            "params_ssal": counts["total"],
            "params_branches": counts["branches"],
            "positions": list(entry.positions),
            "paper_positions": [list(p) for p in entry.paper_positions],
            "layouts": list(entry.layouts),
            "branch_weights": list(entry.weights),
            "alpha": entry.alpha,
        }
        if name in PAPER_PARAMS:
            row["paper_params_baseline"] = int(PAPER_PARAMS[name][0] * 1e6)
            row["paper_params_ssal"] = int(PAPER_PARAMS[name][1] * 1e6)
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_table(args.num_classes, args.groups)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"ssal models ({args.num_classes} classes, groups {args.groups})")
    for col in ("model", "baseline", "SSAL", "paper", "positions (module names)"):
        table.add_column(col, justify="right" if col in ("baseline", "SSAL", "paper") else "left")
    for r in rows:
        paper = r.get("paper_params_baseline")
        table.add_row(
            r["name"],
            f"{r['params_baseline'] / 1e6:.2f}M",
            f"{r['params_ssal'] / 1e6:.2f}M",
            f"{paper / 1e6:.1f}M / {r['paper_params_ssal'] / 1e6:.1f}M" if paper else "",
            " ".join(r["positions"]),
        )
    _console().print(table)
    return 0


# ----------------------------------------------------------------------------------- group
def _read_names(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class names file not found: {p}")
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            return [str(n) for n in json.loads(text)]
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not a JSON list of names ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_confusion(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"confusion matrix file not found: {p}")
    try:
        m = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{p}: not a .npy array ({e})") from None
    if not isinstance(m, np.ndarray):
        raise ValueError(f"{p}: expected one array in .npy format, found an archive")
    return m


def _checkpoint_data(args: argparse.Namespace):  # noqa: ANN202
    """Model, info and datamodule of ``--checkpoint``, with ``--data.data_dir`` applied."""
    from ssal.evaluate import build_datamodule
    from ssal.train import load_checkpoint

    model, info = load_checkpoint(args.checkpoint)
    overrides = {"data_dir": getattr(args, "data.data_dir", None)}
    if getattr(args, "batch_size", None):
        overrides["eval_batch_size"] = args.batch_size
    return model, info, build_datamodule(info.get("data"), **overrides)


def _device(name: str | None) -> str:
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_group(args: argparse.Namespace) -> int:
    from ssal.grouping import Grouping, save_groupings

    names = _read_names(args.names) if args.names else None
    if args.checkpoint:
        from ssal.evaluate import heldout_confusion

        model, info, dm = _checkpoint_data(args)
        confusion = heldout_confusion(
            model,
            dm.heldout_dataloader(),
            lambda x: dm.prepare_batch(x, False),
            info["num_classes"],
            _device(args.device),
        )
        names = names or info.get("class_names")
        if args.save_confusion:
            np.save(args.save_confusion, confusion)
    else:
        confusion = _read_confusion(args.confusion)
    if names is not None and len(names) != confusion.shape[0]:
        raise ValueError(f"{args.names}: {len(names)} names for {confusion.shape[0]} classes")
    groupings = [
        Grouping.from_confusion(confusion, g, args.mode, args.size_margin, args.seed)
        for g in args.groups
    ]
    out = save_groupings(args.out, groupings, names)
    sizes = ", ".join(
        f"{g.name}: sizes {np.bincount(g.assignment).min()}-{np.bincount(g.assignment).max()}"
        for g in groupings
    )
    _console(stderr=True).print(f"wrote {out} ({sizes})")
    return 0


# -------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from ssal.evaluate import evaluate_model

    model, info, dm = _checkpoint_data(args)
    device = _device(args.device)
    n = info["num_classes"]
    prepare = lambda x: dm.prepare_batch(x, False)  # noqa: E731
    alpha = info["alpha"] if args.alpha is None else args.alpha
    tuned = None
    if args.tune_alpha:
        if not model.num_branches:
            raise UserError("--tune-alpha needs a model with SSAL branches")
        held = evaluate_model(
            model,
            dm.heldout_dataloader(),
            prepare,
            n,
            alpha,
            device,
            "tuning alpha on the held-out split",
        )
        alpha = tuned = held["best_alpha"]
    result = evaluate_model(
        model, dm.test_dataloader(), prepare, n, alpha, device, "evaluating on the test split"
    )
    result.pop("confusion", None)
    result.update(
        checkpoint=str(args.checkpoint),
        model=info["model"],
        epoch=info["epoch"],
        alpha_tuned_on_heldout=tuned is not None,
    )
    if args.json:
        write_json(args.json, result)
    _print_evaluation(result)
    return 0


def _print_evaluation(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{r['model']} on {r['num_samples']} test images")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("fine head (+TR)", _pct(r["fine_accuracy"]))
    if r["branch_accuracy"]:
        t.add_row(f"joint (+JP), alpha {r['alpha']:g}", _pct(r["joint_accuracy"]))
        for i, a in enumerate(r["branch_accuracy"]):
            t.add_row(f"branch {i + 1} (coarse)", _pct(a))
        c = r["consistency"]
        t.add_row("all heads agree: share of images", _pct(c["kept_fraction"]))
        t.add_row("all heads agree: accuracy", _pct(c["kept_accuracy"]))
        t.add_row("set aside: fine head right", _pct(c["set_aside_fine_accuracy"]))
        for i, a in enumerate(c["set_aside_branch_accuracy"]):
            t.add_row(f"set aside: branch {i + 1} right", _pct(a))
    _console().print(t)


# ------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from ssal.demo import run_demo

    console = _console()
    summary = run_demo(
        args.out,
        epochs=args.epochs,
        train_size=args.train_size,
        data_dir=args.data_dir,
        seed=args.seed,
        quiet=args.quiet,
        log=console.print,
    )
    _print_demo(summary)
    console.print(f"wrote {Path(args.out) / 'summary.json'} in {summary['total_seconds']:.0f} s")
    return 0


def _print_demo(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"Fashion-MNIST test set ({s['test_size']} images, {s['epochs']} epochs)")
    t.add_column("model")
    t.add_column("accuracy", justify="right")
    t.add_row("baseline", _pct(s["baseline_accuracy"]))
    t.add_row("SSAL, fine head (+TR)", _pct(s["tr_accuracy"]))
    t.add_row(f"SSAL, joint (+JP, alpha {s['alpha']:g} from held-out)", _pct(s["jp_accuracy"]))
    c = s["consistency"]
    t.add_row("SSAL where all heads agree", _pct(c["kept_accuracy"]))
    t.add_row("  share of images where they agree", _pct(c["kept_fraction"]))
    t.add_row("  fine head right where they disagree", _pct(c["set_aside_fine_accuracy"]))
    console = _console()
    console.print(t)
    console.print(
        "A run this short shows what the branches add (agreement flags doubtful answers); "
        "the paper's 1-2 point gain needs full-length training, so the accuracies above may "
        "go either way."
    )


# ----------------------------------------------------------------------------------- study
def cmd_study(args: argparse.Namespace) -> int:
    from ssal.study import plan_runs, run_study

    overrides = [a for a in (args.overrides or []) if a != "--"]
    runs = plan_runs(args.config, args.seeds, args.name, args.grid or [], overrides)
    console = _console()
    summary = run_study(
        runs,
        args.out,
        args.devices,
        args.baseline,
        args.max_runs,
        args.parallel,
        log=console.print,
    )
    print_study(summary, console)
    console.print(f"wrote {Path(args.out) / 'study.json'}")
    return 0


def print_study(summary: dict, console: Any = None) -> None:
    """The study tables: per config mean ± std, then differences with their 95% intervals.

    Laid out to fit an 80-column terminal; the HTML report (``ssal report``) has every column.
    """
    from rich.table import Table

    from ssal.study_report import config_rows, difference_rows, pair_rows

    console = console or _console()
    done = summary.get("finished_runs")
    runs = f"{done} of {summary.get('planned_runs')} runs, " if done is not None else ""
    t = Table(title=f"study: {runs}test accuracy, mean ± std over seeds")
    for col in ("config", "seeds", "+TR (%)", "+JP (%)", "epochs to base"):
        t.add_column(col, justify="left" if col == "config" else "right", no_wrap=col != "config")
    for name, seeds, tr, jp, _alpha, reach, _seconds in config_rows(summary):
        t.add_row(name, seeds, tr, jp, reach)
    console.print(t)
    base = summary["baseline"]
    d = Table(title=f"minus {base}'s +TR, points: {summary['interval']}")
    for col in ("config", "head", "difference [95% CI]", "shows", "seeds"):
        d.add_column(col, justify="left" if col in ("config", "head") else "right")
    for name, tr, tr_shows, jp, jp_shows, n in difference_rows(summary):
        d.add_row(name, "+TR", tr, tr_shows, n)
        if jp != "-":
            d.add_row("", "+JP", jp, jp_shows, n)
    console.print(d)
    if len(summary["configs"]) > 2:
        pt = Table(title="all pairs, b - a, points")
        for col in ("a", "b", "+TR(b) - +TR(a)", "+JP(b) - +JP(a)"):
            pt.add_column(col)
        for a, b, tr, jp, _ in pair_rows(summary):
            pt.add_row(a, b, tr, jp)
        console.print(pt)


# ---------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from ssal.train import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    _console(stderr=True).print(f"wrote {out}/model.safetensors and {out}/ssal.json")
    return 0


# ------------------------------------------------------------------------------------ data
def cmd_data_convert(args: argparse.Namespace) -> int:
    from ssal.shards import convert_to_shards

    meta = convert_to_shards(
        args.dataset, args.data_dir, args.out, args.shard_size, args.heldout, args.seed
    )
    counts = ", ".join(
        f"{k} {v['samples']} in {len(v['shards'])} shards" for k, v in meta["splits"].items()
    )
    _console(stderr=True).print(f"wrote {args.out}: {counts}")
    return 0


# ----------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ssal.bench import bench_rows, run_bench

    if args.compile_mode and not args.compile:
        raise UserError("--compile-mode needs --compile")
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
    )
    if args.json:
        write_json(args.json, result)
    t = Table(title="ssal bench")
    for col in (
        "model",
        "device",
        "precision",
        "train img/s",
        "eval img/s",
        "MFU",
        "speedup",
        "branches",
        "memory",
    ):
        t.add_column(col)
    for row in bench_rows([result]):
        t.add_row(*row)
    _console().print(t)
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    from ssal.cli_report import add_commands

    parser = _Parser(prog="ssal", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--groups", type=int, nargs="+", default=[20, 33, 50])
    p.set_defaults(func=cmd_models)

    for name in LIGHTNING_COMMANDS:  # listed for --help; handled by Lightning's CLI
        sub.add_parser(name, help=f"{name} with a YAML config (Lightning CLI; see ssal {name} -h)")

    p = sub.add_parser("group", help="derive groupings from a confusion matrix")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--confusion", help="(C, C) confusion matrix as .npy")
    src.add_argument("--checkpoint", help="baseline checkpoint (confusion on held-out split)")
    p.add_argument("--groups", type=int, nargs="+", required=True, help="numbers of groups")
    p.add_argument("--mode", choices=["similar", "split"], default="similar")
    p.add_argument("--size-margin", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", help="class names: one per line, or a JSON list")
    p.add_argument("--out", required=True, help="groupings JSON file to write")
    _data_args(p)
    p.add_argument("--save-confusion", help="with --checkpoint: also save the confusion .npy")
    p.set_defaults(func=cmd_group)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint as the paper does")
    p.add_argument("--checkpoint", required=True, help="a .ckpt file or an `ssal export` folder")
    p.add_argument("--alpha", type=float, help="combination factor (default: the checkpoint's)")
    p.add_argument("--tune-alpha", action="store_true", help="pick alpha on the held-out split")
    p.add_argument("--json", help="write the figures to this JSON file")
    _data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("study", help="configs x seeds: mean ± std and paired differences")
    p.add_argument("--config", nargs="+", required=True, help="YAML configs (ssal fit)")
    p.add_argument("--name", nargs="+", help="a name per config (default: file stems)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grid", nargs="+", help="KEY=V1,V2: variants of every config")
    p.add_argument("--baseline", help="config the others are compared with (default: first)")
    p.add_argument("--out", required=True, help="study folder (runs resume from it)")
    p.add_argument("--devices", type=int, default=0, help="GPUs to spread runs over")
    p.add_argument("--parallel", type=int, help="runs at a time (default: one per device)")
    p.add_argument("--max-runs", type=int, help="stop after this many new runs")
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="after --: options passed to every `ssal fit`"
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    p = data_sub.add_parser("convert", help="write a dataset as WebDataset shards for streaming")
    p.add_argument(
        "--dataset", required=True, choices=["cifar10", "cifar100", "fashion-mnist", "imagefolder"]
    )
    p.add_argument("--data-dir", help="dataset folder (imagefolder: with train/ and val/)")
    p.add_argument("--out", required=True, help="new folder for the shards and meta.json")
    p.add_argument("--shard-size", type=int, default=10000, help="images per shard")
    p.add_argument("--heldout", type=float, default=0.0, help="stratified held-out part")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_convert)

    p = sub.add_parser("export", help="weights as safetensors + JSON (safe to share)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="folder to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="training/eval throughput, FLOPs, MFU, speedup")
    p.add_argument("--model", required=True)
    p.add_argument("--ssal", action="store_true", help="with branches (and their overhead)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode (the last three tune kernels; the middle two add CUDA graphs)",
    )
    p.add_argument("--profile", metavar="DIR", help="also write operator tables and traces here")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: table)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--no-reference", action="store_true", help="skip the plain PyTorch loop")
    p.add_argument("--reference-workers", type=int, help="DataLoader workers of the reference")
    p.add_argument("--json", help="write the result to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="baseline vs SSAL on Fashion-MNIST, offline, in minutes")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, help="use this many training images")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    add_commands(sub)
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data.data_dir",
        "--data-dir",
        dest="data.data_dir",
        help="data folder (default: the one the checkpoint was trained on)",
    )
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    return int(func(args) or 0)


LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _run_lightning(argv: list[str], debug: bool) -> int:
    """Hand ``fit``/``validate``/``test`` to Lightning's CLI; user errors stay one line."""
    from ssal.lightning_cli import run_lightning_cli

    argv = [a for a in argv if a != "--debug"]
    try:
        return run_lightning_cli(argv)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        if debug:
            raise
        print(f"ssal: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssal`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _run_lightning(argv, debug)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _run(args.func, args)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        print(f"ssal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
