"""Every promise the README makes, kept: its Python snippets and its ``ssal`` commands run.

README.md is parsed when the tests are collected: every fenced ``python`` block is executed as
written, and every command of the ``bash``/``sh``/``shell``/``console`` blocks is run as
written in one sandbox folder (the working directory of all of them, so later commands find
what earlier ones wrote: ``runs/demo/ssal/model.ckpt``, ``runs/ssal/version_0/...``), with
only sizes made small through documented options (``SMALL_FIT``, ``small_options``) and the
data replaced by small fakes in the original formats. A command that is not run is in
``NOT_RUN`` with the reason; ``test_every_readme_command_is_run_or_listed`` fails for a new
README command until it runs here or is listed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import write_label_file
from tests.test_data import write_cifar100, write_idx

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}

# Commands of the README that are not run here, and why. Keys are the commands as
# ``Command.text`` spells them: the tokens of the (continued) line, comment removed, joined by
# single spaces.
NOT_RUN = {
    # setup: scripts/setup.sh creates .venv and installs packages (network); what `make demo`
    # then runs, `ssal demo`, runs in the sandbox fixture (with --data-dir, --epochs and
    # --train-size), and `make test` is this suite.
    "make demo": "setup (scripts/setup.sh); its `ssal demo` runs in the sandbox fixture",
    "make test": "setup (scripts/setup.sh) and the test suite itself",
    # the WRN-28-10 benchmark is CUDA-only (--device cuda, bf16, compile)
    "ssal bench --model wrn28-10 --ssal --device cuda --precision bf16-mixed --compile "
    "--channels-last --batch-size 128 --json wrn.json --profile prof/": "needs a CUDA GPU",
    # the prepared GPU measurements, run on a GPU machine with .whl and .device_data carried
    "OUT=$OUT bash benchmarks/gpu_bench.sh": "GPU machine only (tests/test_bench.py runs it "
    "with DEVICE=cpu)",
    "OUT=$OUT bash benchmarks/gpu_study.sh": "GPU machine only",
    # several GPUs and several machines
    "ssal fit --config configs/cifar100/densenet190-40_ssal.yaml --trainer.devices 4 "
    "--trainer.strategy ddp": "needs 4 GPUs (DDP is tested by tests/test_ddp.py)",
    "torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK --master-addr node0 "
    "--master-port 29500 -m ssal.cli fit --config configs/imagenet/resnet50_ssal.yaml "
    "--model.groupings.source groupings/imagenet.json --trainer.devices 8 --trainer.num_nodes 2 "
    "--trainer.strategy ddp": "needs 2 nodes of 8 GPUs",
    "srun ssal fit --config configs/imagenet/resnet50_ssal.yaml --model.groupings.source "
    "groupings/imagenet.json --trainer.devices 8 --trainer.num_nodes 2 "
    "--trainer.strategy ddp": "needs a SLURM cluster of 2 nodes of 8 GPUs",
    # ImageNet: 1000 class folders at absolute paths (/data/imagenet, /shared/...) we do not
    # have; the shard writer and reader are tested by tests/test_shards.py
    "ssal data convert --dataset imagefolder --data-dir /data/imagenet --out "
    "/shared/imagenet-shards --heldout 0.02": "needs ImageNet at /data/imagenet",
    "ssal fit --config configs/imagenet/resnet50_ssal.yaml --data ssal.data.ShardDataModule "
    "--data.data_dir /shared/imagenet-shards --data.num_workers 8": "needs ImageNet shards",
    "ssal fit --config configs/imagenet/authors/resnet50_ssal.yaml --data.init_args.data_dir "
    "/data/imagenet --model.groupings.source groupings/imagenet-authors.json": "needs ImageNet "
    "(1000 classes, as the authors' groupings file it is given)",
}

# Commands that fail today because of a bug in src (not in the README), with the bug: strict
# xfail, so the fix turns them into failures here until they are taken off this list.
KNOWN_BUGS: dict[str, str] = {}

# `ssal fit` made small: one step of one epoch, one validation batch, small batches.
SMALL_FIT = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "1",
    "--trainer.limit_val_batches", "1",
    "--data.init_args.batch_size", "4",
    "--data.init_args.eval_batch_size", "8",
]  # fmt: skip
# Networks too big for a CPU test are swapped for tiny-wrn with the documented
# --model.network.name; the rest of the config (recipe, groupings, branches' count) is kept.
BIG_NETWORKS = {"wrn28-10", "densenet190-40", "resnet50", "sewrn16-8", "resnet50-imagenet"}
# Absolute data folders of the README that stand for "your data": the fake data instead.
FAKE_DATA_DIRS = {"/data": "data"}
FASHION = "fashion-mnist"  # the sandbox's fake Fashion-MNIST folder


@dataclass(frozen=True)
class Command:
    line: int  # README.md line where the command starts
    text: str  # tokens joined by single spaces (the key of NOT_RUN and KNOWN_BUGS)
    argv: tuple[str, ...]  # tokens after shell quoting and brace expansion


@dataclass(frozen=True)
class Snippet:
    line: int
    code: str


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line of the first content line, content) of every fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        blocks.append((m.group(1).lower(), i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return blocks


def expand_braces(token: str) -> list[str]:
    """The shell's brace expansion of one ``a{b,c}d`` group (all the README uses)."""
    m = re.fullmatch(r"([^{}]*)\{([^{}]*,[^{}]*)\}([^{}]*)", token)
    if m is None:
        return [token]
    return [m.group(1) + part + m.group(3) for part in m.group(2).split(",")]


def shell_commands(block: str, first_line: int) -> list[Command]:
    commands, pending, start = [], "", first_line
    for n, line in enumerate(block.splitlines(), first_line):
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + line, comments=True)
        pending = ""
        if tokens:
            argv = tuple(t for token in tokens for t in expand_braces(token))
            commands.append(Command(start, " ".join(tokens), argv))
    assert not pending, f"README.md:{start}: a continued line ends its block"
    return commands


def readme_commands() -> list[Command]:
    blocks = fenced_blocks(README.read_text())
    return [
        c
        for lang, line, body in blocks
        if lang in SHELL_LANGUAGES
        for c in shell_commands(body, line)
    ]


def readme_snippets() -> list[Snippet]:
    blocks = fenced_blocks(README.read_text())
    return [Snippet(line, body) for lang, line, body in blocks if lang == "python"]


def commands_to_run() -> list[Command]:
    return [c for c in readme_commands() if c.text not in NOT_RUN]


# --------------------------------------------------------------------------------------------
# The README's lists hold what they must
# --------------------------------------------------------------------------------------------


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands()
    texts = {c.text for c in commands}
    assert len(commands) >= 20 and len(readme_snippets()) >= 2  # the parser found the blocks
    for c in commands:
        assert c.text in NOT_RUN or c.argv[0] == "ssal", (
            f"README.md:{c.line}: `{c.text}` is neither an ssal command nor listed in NOT_RUN"
        )
    # no stale entries: every listed command is still in the README
    assert not set(NOT_RUN) - texts, set(NOT_RUN) - texts
    assert not set(KNOWN_BUGS) - texts, set(KNOWN_BUGS) - texts
    # a command in a block of another language would go untested
    for lang, line, body in fenced_blocks(README.read_text()):
        if lang not in SHELL_LANGUAGES | {"python"}:
            for k, text in enumerate(body.splitlines()):
                assert not re.match(r"\s*(\$ )?ssal ", text), f"README.md:{line + k}: {lang}"


def test_readme_parser_joins_continuations_and_expands_braces():
    (c,) = shell_commands("ssal study --config a_{x,y}.yaml \\\n  --out 'o d'  # note\n", 7)
    assert c.line == 7 and c.text == "ssal study --config a_{x,y}.yaml --out o d"
    assert c.argv == ("ssal", "study", "--config", "a_x.yaml", "a_y.yaml", "--out", "o d")
    assert shell_commands("# only a comment\n\n", 1) == []


# --------------------------------------------------------------------------------------------
# The sandbox: fake data, the files the commands name, every command run once in order
# --------------------------------------------------------------------------------------------


def write_fashion_mnist(folder: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """Fashion-MNIST idx files (gzip, as distributed): one noisy template per class."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 28, 28))
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(templates[labels] + rng.normal(0, 60, (n, 28, 28)), 0, 255)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def write_images(root: Path) -> None:
    """The images the predict commands name, and an image folder for the fine-tuning config."""
    from PIL import Image

    rng = np.random.default_rng(1)

    def image(path: Path, size: int, mode: str = "L") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)

    image(root / "boot.png", 28)
    image(root / "pullover.png", 40, "RGB")
    image(root / "photos" / "a.png", 28)
    for k in range(2):
        image(root / "photos" / "more" / f"b{k}.jpg", 36, "RGB")
    for split, n in (("train", 6), ("val", 2)):
        for c in range(6):
            for k in range(n):
                image(root / "data" / "my-images" / split / f"class{c}" / f"{k}.jpg", 40, "RGB")


def write_inputs(root: Path) -> None:
    """Everything the README's commands read, in the formats the README names."""
    shutil.copytree(ROOT / "configs", root / "configs")
    write_cifar100(root / "data", n_train=200, n_test=100)  # the configs' data_dir: data
    write_fashion_mnist(root / FASHION)
    write_images(root)
    rng = np.random.default_rng(2)
    np.save(root / "confusion.npy", rng.integers(0, 20, (100, 100)).astype(np.int64))
    (root / "classes.txt").write_text("".join(f"class {c}\n" for c in range(100)))
    # the authors' published groupings, where the README's commands and configs look for them
    (root / "labels").mkdir()
    for g in (20, 33, 50):
        for folder in (root, root / "labels"):
            write_label_file(folder / f"cifar100_{g}_group_similar_v2.txt", np.arange(100) % g)
    for g in (200, 334, 500):
        write_label_file(root / f"imagenet_{g}_group_similar_v2.txt", np.arange(1000) % g)
    # stand-in for timm's published ResNet-18 weights (--model.network.pretrained PATH)
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), root / "r18.pt")


def config_of(argv: list[str]) -> dict:
    i = argv.index("--config")
    return yaml.safe_load(Path(argv[i + 1]).read_text())


def fit_small(argv: list[str]) -> list[str]:
    """``ssal fit`` options that make the run small (appended: the last value wins)."""
    config = config_of(argv)
    model, data = config["model"], config["data"]["init_args"]
    extra = list(SMALL_FIT)
    network, groupings = model.get("network") or {}, model.get("groupings") or {}
    if network.get("name") in BIG_NETWORKS:
        extra += ["--model.network.name", "tiny-wrn"]
    if groupings.get("source") == "auto" and "--model.groupings.source" not in argv:
        extra += ["--model.groupings.probe_epochs", "1"]
    if data.get("dataset") == "fashion-mnist":
        extra += ["--data.init_args.data_dir", FASHION]
    if data.get("image_size"):  # image folders: 112 px, the least the ImageNet branches take
        extra += ["--data.init_args.image_size", "112"]
    if network.get("pretrained") is True:
        extra += ["--model.network.pretrained", "r18.pt"]
    return extra


def small_options(argv: list[str]) -> list[str]:
    """What a README command gets appended, by subcommand: only sizes and the fake data."""
    if argv[0] == "fit":
        return fit_small(argv)
    if argv[0] == "study":
        # one seed instead of three (each run is two `ssal` processes: a fit, an evaluation);
        # options after -- go to every `ssal fit` of the study, the baseline's too
        return ["--seeds", "0", "--", *SMALL_FIT, "--data.init_args.data_dir", FASHION]
    return []


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    before: set[Path]  # last.ckpt files under the sandbox before the command
    failed_check: str = ""  # what the command's check found wrong, right after it ran


def run_ssal(argv: list[str], root: Path) -> Result:
    """``ssal ARGV`` in the sandbox, in this process (``ssal.cli.main``, as the console
    script calls it: no interpreter start-up per command)."""
    from ssal.cli import main

    before = set(root.glob("**/last.ckpt"))
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
    return Result(argv, rc, out.getvalue(), err.getvalue(), time.perf_counter() - start, before)


@dataclass
class Sandbox:
    root: Path
    results: dict[str, Result]
    setup: dict[str, Result]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    root = tmp_path_factory.mktemp("readme")
    write_inputs(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        setup = {
            # what `make demo` runs after its setup, sized by its own documented options
            "demo": run_ssal(
                ["demo", "--data-dir", FASHION, "--epochs", "1", "--train-size", "200", "--quiet"],
                root,
            ),
            # baseline.ckpt for `ssal group --checkpoint baseline.ckpt`: a CIFAR-100 baseline
            "baseline": run_ssal(
                [
                    "fit",
                    "--config",
                    "configs/cifar100/wrn28-10_baseline.yaml",
                    *fit_small(["--config", "configs/cifar100/wrn28-10_baseline.yaml"]),
                    "--trainer.default_root_dir",
                    "setup-runs",
                ],
                root,
            ),
        }
        for result in setup.values():
            assert result.rc == 0, result.stderr
        shutil.copy(next(root.glob("setup-runs/**/last.ckpt")), root / "baseline.ckpt")
        results = {}
        for c in commands_to_run():
            argv = [FAKE_DATA_DIRS.get(a, a) for a in c.argv[1:]]
            r = results[c.text] = run_ssal(argv + small_options(argv), root)
            if r.rc == 0:  # checked at once: a later command may overwrite what it wrote
                try:
                    CHECKS[argv[0]](r, root)
                except Exception as e:  # noqa: BLE001 - reported by the command's test
                    r.failed_check = "".join(traceback.format_exception(e)[-3:])
        if os.environ.get("SSAL_README_TIMES"):  # with -s: where the time goes
            for text, r in {**setup, **results}.items():
                print(f"{r.seconds:6.1f} s  {text}")
    finally:
        os.chdir(cwd)
    return Sandbox(root, results, setup)


# --------------------------------------------------------------------------------------------
# What each command must have written
# --------------------------------------------------------------------------------------------


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def values(argv: list[str], name: str) -> list[str]:
    if name not in argv:
        return []
    rest = argv[argv.index(name) + 1 :]
    return list(rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))])


def check_fit(r: Result, root: Path) -> None:
    (new,) = set(root.glob("**/last.ckpt")) - r.before  # one new run
    run = new.parent.parent  # runs/ssal/version_N: what the README lists
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    assert (run / "tensorboard").is_dir() and list(new.parent.glob("best-epoch=*.ckpt"))
    assert re.search(r"last checkpoint: .*last\.ckpt", r.stderr), r.stderr


def check_group(r: Result, root: Path) -> None:
    doc = json.loads((root / option(r.argv, "--out")).read_text())
    sizes = values(r.argv, "--groups") or [None] * len(values(r.argv, "--labels"))
    assert len(doc["groupings"]) == len(sizes)
    for g, size in zip(doc["groupings"], sizes, strict=True):
        assert size is None or g["num_groups"] == int(size)
    if "--names" in r.argv:
        names = (root / option(r.argv, "--names")).read_text().splitlines()
        assert doc["class_names"] == names


def check_evaluate(r: Result, root: Path) -> None:
    doc = json.loads((root / option(r.argv, "--json")).read_text())
    keys = {"fine_accuracy", "joint_accuracy", "branch_accuracy", "alpha", "alpha_source"}
    keys |= {"num_samples", "joint_accuracy_by_alpha", "set_aside"}
    if "--tune-alpha" in r.argv:
        keys.add("heldout_joint_accuracy_by_alpha")
    assert keys <= set(doc), keys - set(doc)
    assert {"kept_fraction", "kept_accuracy"} <= set(doc["set_aside"])


def check_export(r: Result, root: Path) -> None:
    out = root / option(r.argv, "--out")
    weights = "model.onnx" if option(r.argv, "--format") == "onnx" else "model.safetensors"
    assert (out / "ssal.json").is_file() and (out / weights).is_file()


def predicted_files(r: Result) -> list[str]:
    """The image arguments of ``ssal predict`` (what follows --checkpoint's value)."""
    rest, files, skip = r.argv[1:], [], False
    for a in rest:
        if skip:
            skip = False
        elif a in ("--checkpoint", "--out", "--top-k", "--alpha", "--batch-size"):
            skip = True
        elif not a.startswith("--"):
            files.append(a)
    return files


def check_predict(r: Result, root: Path) -> None:
    paths = predicted_files(r)
    images = []
    for p in paths:
        if (root / p).is_dir():
            images += [f for f in (root / p).rglob("*") if f.is_file()]
        elif any(ch in p for ch in "*?["):
            images += list(root.glob(p))
        else:
            images.append(root / p)
    assert images, paths
    out = option(r.argv, "--out")
    if out is None and "--json" in r.argv:
        doc = json.loads(r.stdout)
        assert len(doc["predictions"]) == len(images)
        top_k = int(option(r.argv, "--top-k") or 1)
        assert all(len(p["fine"]["top"]) == top_k for p in doc["predictions"])
    elif out is None:  # a table: one row per image
        assert all(Path(p).name in r.stdout for p in paths), r.stdout
    elif out.endswith(".jsonl"):
        records = [json.loads(x) for x in (root / out).read_text().splitlines()]
        assert len(records) == len(images) and all("joint" in x for x in records)
    elif out.endswith(".csv"):
        rows = (root / out).read_text().splitlines()
        assert len(rows) == 1 + len(images) and "consistent" in rows[0]


def check_report(r: Result, root: Path) -> None:
    out = option(r.argv, "--out")
    page = root / out if out else root / r.argv[1] / "report.html"
    assert 'id="ssal-data"' in page.read_text()
    if "--json" in r.argv:
        json.loads((root / option(r.argv, "--json")).read_text())


def check_study(r: Result, root: Path) -> None:
    study = json.loads((root / option(r.argv, "--out") / "study.json").read_text())
    assert study


CHECKS = {
    "fit": check_fit,
    "group": check_group,
    "evaluate": check_evaluate,
    "export": check_export,
    "predict": check_predict,
    "report": check_report,
    "study": check_study,
}


def command_params() -> list:
    params = []
    for c in commands_to_run():
        marks = [pytest.mark.slow]
        if c.text in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[c.text], strict=True))
        params.append(pytest.param(c, id=f"README.md:{c.line}", marks=marks))
    return params


@pytest.mark.parametrize("command", command_params())
def test_readme_command(sandbox: Sandbox, command: Command):
    r = sandbox.results[command.text]
    shown = " ".join(["ssal", *r.argv])
    assert r.rc == 0, f"README.md:{command.line}: `{shown}` exited {r.rc}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    assert not r.failed_check, f"README.md:{command.line}: `{shown}`: {r.failed_check}"


@pytest.mark.slow
def test_demo_writes_what_the_readme_says(sandbox: Sandbox):
    """`ssal demo` (what `make demo` runs): the files and summary keys the README lists."""
    demo = sandbox.root / "runs" / "demo"
    summary = json.loads((demo / "summary.json").read_text())
    keys = {"baseline_accuracy", "tr_accuracy", "jp_accuracy", "alpha", "set_aside"}
    keys |= {"groupings", "baseline_checkpoint", "ssal_checkpoint", "warnings"}
    assert keys <= set(summary), keys - set(summary)
    assert (demo / "groupings.json").is_file() and (demo / "report.html").is_file()
    assert (demo / "ssal" / "model.ckpt").is_file() and (demo / "baseline" / "model.ckpt").is_file()


# --------------------------------------------------------------------------------------------
# The Python snippets
# --------------------------------------------------------------------------------------------


def check_namespace(ns: dict) -> None:
    """What the snippets' comments promise, for the names they define."""
    import torch

    from ssal import SSALModel

    if "out" in ns:
        out, groupings = ns["out"], ns["groupings"]
        n, classes = ns["images"].shape[0], ns["confusion"].shape[0]
        assert out.logits.shape == (n, classes)
        assert [b.shape for b in out.branch_logits] == [(n, g.num_groups) for g in groupings]
    if "loss" in ns:
        assert torch.isfinite(ns["loss"].total) and len(ns["loss"].branches) == len(groupings)
    if "probs" in ns:
        assert torch.allclose(ns["probs"].sum(1), torch.ones(len(ns["probs"])), atol=1e-4)
    if isinstance(ns.get("model"), SSALModel) and "out" not in ns:
        model = ns["model"].eval()
        with torch.no_grad():
            out = model(torch.randn(2, *model.input_size))
        assert out.logits.shape[0] == 2 and len(out.branch_logits) >= 1


@pytest.mark.slow  # the first builds WRN-28-10 (43M parameters)
@pytest.mark.parametrize(
    "snippet", [pytest.param(s, id=f"README.md:{s.line}") for s in readme_snippets()]
)
def test_readme_python_snippet(snippet: Snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(snippet.code, f"README.md:{snippet.line}", "exec"), ns)  # noqa: S102
    check_namespace(ns)
