"""``ssal predict``: structured predictions for image files, folders and globs.

A few images: a table (or ``--json``). Many: ``--out FILE.jsonl`` (one record per line) or
``.csv``, written as they are predicted, with a progress bar; unreadable files are skipped with
a warning each (``--strict``: the first one is an error).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssal.cli.common import console, device, pct, say, show_table, warn
from ssal.errors import UserError

__all__ = ["add_parser", "run"]

FORMATS = (".jsonl", ".csv", ".json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="structured predictions for image files, folders or globs",
        description="Structured predictions (fine class, each branch's group, agreement, joint "
        "prediction) for image files; folders are searched recursively for images.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a .ckpt file, or an `ssal export` folder (safetensors or ONNX)",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="PATH", help="image files, folders or glob patterns"
    )
    p.add_argument(
        "--out", help="write the predictions to FILE.jsonl (a record per line), .csv or .json"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--strict", action="store_true", help="an unreadable file is an error")
    p.add_argument("--alpha", type=float, help="combination factor (default: the checkpoint's)")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per head (default: 1)")
    p.add_argument("--batch-size", type=int, default=256, help="images at a time (default: 256)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssal.inference import find_images, load_model

    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be >= 1")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: give a .jsonl, .csv or .json file")
    files = find_images(args.inputs)
    if not files:
        raise UserError(f"no image files in {' '.join(args.inputs)}")
    model, card = load_model(args.checkpoint)
    model = model.to(device(args.device))
    alpha = float(card.alpha if args.alpha is None else args.alpha)
    head = {
        "checkpoint": str(args.checkpoint),
        "model": card.model,
        "alpha": alpha,
        "groupings": [g.name for g in card.groupings],
    }
    skipped: list[str] = []
    records = list(_predict(model, card, files, alpha, args, skipped)) if not out else None
    if out is not None:
        kept: list[dict[str, Any]] = []
        stream = _predict(model, card, files, alpha, args, skipped)
        count = _write(out, head, (kept.append(r) or r for r in stream) if args.json else stream)
        records = kept
        if not count:
            raise UserError(f"none of the {len(files)} images could be read")
        say(
            f"wrote {count} predictions to {out}" + (f"; skipped {len(skipped)}" if skipped else "")
        )
        if not args.json:
            return 0
    if not records:
        raise UserError(f"none of the {len(files)} images could be read")
    doc = {**head, "predictions": records}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc)
    if skipped:
        say(f"skipped {len(skipped)} unreadable files")
    return 0


def _predict(
    model: Any, card: Any, files: list[Path], alpha: float, args: argparse.Namespace, skipped: list
) -> Iterator[dict[str, Any]]:
    """Records one by one, with a progress bar on stderr; unreadable files warned and skipped
    (or, with ``--strict``, an error)."""
    from ssal.inference import iter_predictions

    def skip(path: Path, reason: str) -> None:
        if args.strict:
            raise UserError(f"{reason}; stopped (--strict)")
        skipped.append(str(path))
        warn(f"skipped {reason}")

    batches = iter_predictions(model, card, files, alpha, args.top_k, args.batch_size, skip)
    if args.quiet or not console(stderr=True).is_terminal:
        for batch in batches:
            yield from batch
        return
    from rich.progress import Progress

    with Progress(transient=True, console=console(stderr=True)) as bar:
        task = bar.add_task("predicting", total=len(files))
        for batch in batches:
            yield from batch
            bar.update(task, completed=min(len(files), bar.tasks[0].completed + args.batch_size))


def _write(out: Path, head: dict, records: Iterator[dict[str, Any]]) -> int:
    """Stream ``records`` into ``out`` (through a temporary file: a failed run, or one with
    nothing to write, leaves no file and an earlier ``out`` as it was); returns how many were
    written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", newline="") as f:
            kind = out.suffix.lower()
            if kind == ".json":
                doc = {**head, "predictions": list(records)}
                count = len(doc["predictions"])
                json.dump(doc, f, indent=2)
            else:
                write = _csv_writer(f) if kind == ".csv" else _jsonl_writer(f)
                for r in records:
                    write(r)
                    count += 1
        if count:
            tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _jsonl_writer(f: io.TextIOBase) -> Any:
    return lambda r: f.write(json.dumps(r) + "\n")


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV row: the fine and joint answers, agreement, and each branch's group."""
    row = {
        "file": r["file"],
        "fine_class": r["fine"]["class"],
        "fine_name": r["fine"]["name"],
        "fine_prob": round(r["fine"]["prob"], 6),
        "joint_class": r["joint"]["class"],
        "joint_name": r["joint"]["name"],
        "joint_prob": round(r["joint"]["prob"], 6),
        "consistent": r["consistent"],
    }
    for b in r["branches"]:
        i = b["branch"]
        row[f"branch{i}_group"] = b["group"]
        row[f"branch{i}_prob"] = round(b["prob"], 6)
        row[f"branch{i}_agrees"] = b["agrees"]
    return row


def _csv_writer(f: io.TextIOBase) -> Any:
    writer: list[csv.DictWriter] = []

    def write(r: dict[str, Any]) -> None:
        row = _csv_row(r)
        if not writer:
            writer.append(csv.DictWriter(f, fieldnames=list(row)))
            writer[0].writeheader()
        writer[0].writerow(row)

    return write


def _print(doc: dict[str, Any]) -> None:
    answers = lambda head: " / ".join(p["name"] for p in head["top"])  # noqa: E731
    rows: list[list[str] | None] = []
    for r in doc["predictions"]:
        f, j = r["fine"], r["joint"]
        rows.append([r["file"], "fine head", answers(f), pct(f["prob"]), ""])
        for b in r["branches"]:
            agrees = "yes" if b["agrees"] else "[red]no[/red]"
            members = "{" + ", ".join(b["members"]) + "}"
            head = f"branch {b['branch']} ({b['grouping']})"
            rows.append(["", head, members, pct(b["prob"]), agrees])
        if r["branches"]:
            all_agree = "all agree" if r["consistent"] else "[red]disagree[/red]"
            rows.append(["", "joint (+JP)", answers(j), pct(j["prob"]), all_agree])
        rows.append(None)
    title = f"{doc['model']}: structured predictions (alpha {doc['alpha']:g})"
    show_table(title, ("image", "head", "answer", "prob", "agrees"), rows, right=("prob",))
