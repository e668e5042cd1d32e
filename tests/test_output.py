"""What a user sees: commands run as a user runs them, their output checked line by line.

Every line on stderr is ssal's own (``ssal: ...``): no library start-up line, warning or tip;
every user error is exactly one line and exit code 2; Ctrl-C is exit code 130 with the command
that resumes the run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_tiny_config
from tests.test_data import write_cifar100


def ssal(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssal.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def only_our_lines(text: str) -> list[str]:
    lines = text.splitlines()
    assert all(line.startswith("ssal: ") for line in lines), text
    return lines


def one_error(result: subprocess.CompletedProcess) -> str:
    """The single line a failing command prints."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    write_cifar100(root / "data", n_train=300, n_test=100)
    write_tiny_config(
        root / "tiny.yaml",
        root / "data",
        model={"groupings": {"source": "auto", "probe_epochs": 1, "auto_groups": [20, 33]}},
    )
    return root


@pytest.fixture(scope="module")
def fitted(project: Path) -> subprocess.CompletedProcess:
    return ssal("fit", "--config", "tiny.yaml", cwd=project)


@pytest.mark.slow
def test_fit_says_what_it_does_and_nothing_else(fitted, project):
    assert fitted.returncode == 0, fitted.stderr
    assert fitted.stdout == ""
    lines = only_our_lines(fitted.stderr)
    run = "runs/ssal/version_0"
    assert lines == [
        "ssal: probe: training tiny-wrn without branches for 1 epoch to group its confusion",
        f"ssal: groupings (similar) from the probe's held-out confusion: {run}/groupings.json",
        lines[2],
        f"ssal: run folder: {run}",
        f"ssal: last checkpoint: {run}/checkpoints/last.ckpt",
        lines[5],
    ]
    assert lines[2].startswith("ssal: training tiny-wrn with 2 SSAL branches (similar-20, ")
    assert lines[2].endswith(" parameters, 2 epochs on cpu")
    assert lines[5].startswith(f"ssal: best checkpoint: {run}/checkpoints/best-epoch=")
    assert (project / run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_evaluate_prints_a_table_that_survives_a_pipe(fitted, project):
    ckpt = "runs/ssal/version_0/checkpoints/last.ckpt"
    result = ssal("evaluate", "--checkpoint", ckpt, "--tune-alpha", cwd=project)
    assert result.returncode == 0, result.stderr
    warning = only_our_lines(result.stderr)  # alpha from 60 held-out images: one warning
    assert len(warning) == 1 and "held-out images" in warning[0]
    out = result.stdout.splitlines()  # not a terminal: tab-separated, nothing cut
    assert out[0] == "# tiny-wrn on 100 test images"
    assert out[1] == "measure\tvalue"
    rows = dict(line.split("\t") for line in out[2:])
    assert rows["fine head (+TR)"].endswith("%") and "branch 2 (coarse)" in rows
    assert any(k.startswith("joint (+JP), alpha ") for k in rows)


@pytest.mark.slow
def test_user_errors_are_one_line(fitted, project, tmp_path):
    missing = one_error(
        ssal(
            "fit",
            "--config",
            str(project / "tiny.yaml"),
            "--data.init_args.data_dir",
            str(tmp_path / "nowhere"),
            cwd=tmp_path,
        )  # fmt: skip
    )
    assert "cifar100 not found" in missing
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started

    typo = one_error(ssal("fit", "--config", "tiny.yaml", "--trainer.max_epocs", "3", cwd=project))
    assert "unknown key trainer.max_epocs on the command line" in typo
    assert "did you mean trainer.max_epochs" in typo

    text = (project / "tiny.yaml").read_text().replace("max_epochs", "max_epoch")
    (tmp_path / "typo.yaml").write_text(text)
    typo = one_error(ssal("fit", "--config", "typo.yaml", cwd=tmp_path))
    assert "unknown key trainer.max_epoch in typo.yaml" in typo
    assert "did you mean trainer.max_epochs" in typo

    (tmp_path / "corrupt.ckpt").write_bytes(os.urandom(4000))
    bad = one_error(
        ssal(
            "fit",
            "--config",
            str(project / "tiny.yaml"),
            "--ckpt_path",
            "corrupt.ckpt",
            cwd=tmp_path,
        )  # fmt: skip
    )
    assert (
        bad
        == "ssal: error: corrupt.ckpt: not a loadable checkpoint (not a PyTorch checkpoint file)"
    )
    for command in ("evaluate", "predict"):
        args = [command, "--checkpoint", "corrupt.ckpt"] + (
            ["x.png"] if command == "predict" else []
        )
        assert one_error(ssal(*args, cwd=tmp_path)) == bad


@pytest.mark.slow
def test_ctrl_c_exits_130_and_says_how_to_resume(project, tmp_path):
    config = write_tiny_config(
        tmp_path / "long.yaml", project / "data", trainer={"max_epochs": 200}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssal.cli", "fit", "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "runs/ssal/version_0/checkpoints/last.ckpt"
    deadline = time.time() + 120
    while not last.is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out == ""
    lines = only_our_lines(err)
    run = "runs/ssal/version_0"  # the run itself, never the newest of another config
    assert (
        lines[-1] == f"ssal: interrupted; resume with: ssal fit --config {config} --ckpt_path {run}"
    )


@pytest.mark.slow
def test_runs_go_under_default_root_dir(project, tmp_path):
    result = ssal(
        "fit", "--config", str(project / "tiny.yaml"), "--model.groupings.source", "null",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", "elsewhere", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere/runs/ssal/version_0/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
    report = json.dumps(only_our_lines(result.stderr))
    assert "elsewhere/runs/ssal/version_0" in report


@pytest.mark.parametrize(
    "args, error",
    [
        (
            ["--trainer.max_epochs", "abc"],
            "trainer.max_epochs on the command line: expected an integer or null, got 'abc'",
        ),
        (
            ["--model.optim.lr", "x"],
            "model.optim.lr on the command line: expected a number, got 'x'",
        ),
        (["--model.lr", "0.1"], "model.lr is now model.optim.lr (on the command line)"),
        (
            ["--data.init_args.batch_size", "-3"],
            "data.init_args: batch_size and eval_batch_size must be >= 1, got -3 and 512 "
            "(on the command line)",
        ),
        (
            ["--trainer.max_epoch", "1"],
            "unknown key trainer.max_epoch on the command line; did you mean "
            "trainer.max_epochs? (see ssal fit --help)",
        ),
    ],
)
def test_config_values_of_the_wrong_kind_are_one_line_in_our_words(
    project, args, error, capsys, monkeypatch
):
    """jsonargparse's multi-line account of a refused value becomes one line that says where
    the value came from (the config file named only when the line does not say)."""
    from ssal.cli import main

    monkeypatch.chdir(project)
    assert main(["fit", "--config", "tiny.yaml", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"ssal: error: {error}\n" and captured.out == ""


FOLDER_CONFIG = """trainer: {max_epochs: 1, accelerator: cpu}
data:
  class_path: ssal.data.ImageFolderDataModule
  init_args: {data_dir: images, KEY: 64}
model: {model: small-cnn}
"""


@pytest.mark.parametrize(
    "key, hint",
    [
        ("imagesize", "; did you mean data.init_args.image_size? (see ssal fit --help)"),
        (  # a key of another datamodule: never suggested as if it were this one's
            "train_size",
            " (ssal.data.ImageFolderDataModule takes no train_size; "
            "ssal.data.InMemoryDataModule does) (see ssal fit --help)",
        ),
    ],
)
def test_unknown_keys_get_suggestions_from_the_class_in_use(tmp_path, key, hint, capsys):
    from ssal.cli import main

    config = tmp_path / "folder.yaml"
    config.write_text(FOLDER_CONFIG.replace("KEY", key))
    assert main(["fit", "--config", str(config)]) == 2
    expected = f"ssal: error: unknown key data.init_args.{key} in {config}{hint}\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("where", ["command line", "config"])
def test_a_bad_data_dir_is_placed_where_it_was_given(project, where, capsys, monkeypatch):
    from ssal.cli import main

    monkeypatch.chdir(project)
    config = "tiny.yaml"
    args = ["--data.init_args.data_dir", "nowhere"]
    if where == "config":
        Path("other.yaml").write_text(
            Path(config).read_text().replace(f"data_dir: {project / 'data'}", "data_dir: nowhere")
        )
        config, args = "other.yaml", []
        assert "nowhere" in Path(config).read_text()
    assert main(["fit", "--config", config, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and len(err.splitlines()) == 1
    if where == "config":
        assert err.endswith("(config other.yaml)")
    else:
        assert err.endswith("(on the command line)") and "tiny.yaml" not in err


def run_on_a_terminal(args: list[str], cwd: Path, columns: int = 100) -> tuple[int, str]:
    """Run ``ssal ARGS`` with a pseudo-terminal of ``columns`` columns as its stdout and
    stderr (as a user's shell does); its exit code and everything it drew."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssal.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_fit_on_a_terminal_says_where_its_checkpoints_are_after_the_bar_stops(project, tmp_path):
    """On a terminal the progress bar redraws itself until it stops; the lines naming the
    checkpoints come after that, so no redraw erases them or glues them to the bar."""
    config = write_tiny_config(tmp_path / "c.yaml", project / "data", trainer={"max_epochs": 1})
    code, text = run_on_a_terminal(
        ["fit", "--config", str(config), "--trainer.enable_progress_bar", "true"], tmp_path
    )
    assert code == 0, text
    assert "Epoch 0/0" in text  # the bar was drawn
    show_cursor = "\x1b[?25h"  # the bar's last act: the cursor shown again
    assert show_cursor in text
    after = text[text.rfind(show_cursor) + len(show_cursor) :].replace("\r", "").splitlines()
    assert after[:2] == [
        "ssal: last checkpoint: runs/ssal/version_0/checkpoints/last.ckpt",
        "ssal: best checkpoint: runs/ssal/version_0/checkpoints/best-epoch=0.ckpt "
        f"(val/acc_fine {after[1].rsplit(' ', 1)[-1]}",
    ]


@pytest.mark.parametrize("where", ["command line", "config"])
def test_a_groupings_file_given_the_flat_way_names_the_new_key(tmp_path, where, capsys):
    """``model.groupings: FILE`` (the layout before 0.3): jsonargparse would read the file as
    the group's values and complain of its keys; the line names the key to use instead."""
    import numpy as np

    from ssal.cli import main
    from ssal.grouping import Grouping, save_groupings

    groupings = save_groupings(tmp_path / "g.json", [Grouping(np.arange(100) % 20)])
    model = {} if where == "command line" else {"groupings": str(groupings)}
    config = write_tiny_config(tmp_path / "c.yaml", tmp_path / "data")
    if model:
        import yaml

        doc = yaml.safe_load(config.read_text())
        doc["model"].update(model)
        config.write_text(yaml.safe_dump(doc))
    extra = ["--model.groupings", str(groupings)] if where == "command line" else []
    assert main(["fit", "--config", str(config), *extra]) == 2
    said = "on the command line" if where == "command line" else f"in {config}"
    assert capsys.readouterr().err == (
        f"ssal: error: model.groupings is now model.groupings.source ({said})\n"
    )
