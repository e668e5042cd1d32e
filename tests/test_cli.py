import json
import subprocess
import sys

import numpy as np
import pytest

from ssal.backbones import get_entry, list_models
from ssal.cli import main
from ssal.grouping import load_groupings
from tests.conftest import write_label_file

PAPER_PARAMS = {n: get_entry(n).paper.params for n in list_models() if get_entry(n).paper.params}


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (base, _) in PAPER_PARAMS.items():
        r = rows[name]
        assert abs(r["params_baseline_keras"] / 1e6 - base) / base < 0.03
        assert r["params_ssal"] > r["params_baseline"]
        assert len(r["positions"]) == len(r["layouts"]) == 3
    assert rows["resnet50"]["paper_positions"] == [[1, -1], [2, -1], [3, -1]]
    assert rows["densenet190-40"]["positions"] == ["block1", "block2:input", "block3:input"]
    assert (
        rows["timm/NAME"]["family"]
        and rows["torchvision/NAME"]["example"] == "torchvision/resnet18"
    )
    # both conventions: Keras adds batch norm's moving mean and variance (2 x 5,792 in the
    # authors' WRN-28-10 backbone, 2 x 22,720 in their ResNet-50)
    wrn, resnet = rows["wrn28-10"], rows["resnet50"]
    assert (wrn["params_baseline"], wrn["params_baseline_keras"]) == (36_546_980, 36_564_932)
    assert (resnet["params_baseline"], resnet["params_baseline_keras"]) == (23_727_204, 23_772_644)
    assert resnet["params_ssal_keras"] == resnet["authors_params_ssal"] == 28_886_131
    imagenet = rows["resnet50-imagenet"]  # at its own paper setting: 1000 classes, 200/334/500
    assert imagenet["params_ssal"] == imagenet["authors_params_ssal"] == 37_453_730
    assert imagenet["groups"] == [200, 334, 500] and imagenet["authors_count"] == "torch"


def test_models_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "densenet190-40" in out and "23.73M / 23.77M" in out and "23,772,644" in out
    assert "preact-resnet50" in out and "authors' Keras code" in out


def test_group_reads_the_authors_label_files(tmp_path, capsys):
    files = [
        write_label_file(tmp_path / f"cifar100_{g}_group_similar_v2.txt", np.arange(12) % g)
        for g in (2, 3)
    ]
    (tmp_path / "names.txt").write_text("\n".join(f"class{i}" for i in range(12)))
    out = tmp_path / "g.json"
    args = ["group", "--labels", *map(str, files), "--out", str(out)]
    assert main([*args, "--names", str(tmp_path / "names.txt")]) == 0
    groupings, names = load_groupings(out, 12)
    assert [(g.name, g.mode, g.num_groups) for g in groupings] == [
        ("cifar100_2_group_similar_v2", "similar", 2),
        ("cifar100_3_group_similar_v2", "similar", 3),
    ]
    assert groupings[1].assignment.tolist() == (np.arange(12) % 3).tolist()
    assert names[11] == "class11"
    write_label_file(files[1], np.arange(10) % 3)  # a file for another number of classes
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("10 group indices (one per class) but the data has 12 classes")
    assert main([*args, "--groups", "2"]) == 2
    assert "--groups does not apply to --labels" in capsys.readouterr().err


@pytest.mark.parametrize(
    "lines, classes, error",
    [
        (["0", "1"] * 5, 12, "10 group indices (one per class) but the data has 12 classes"),
        (["0", "1.5", "1"] * 4, 12, "line 2: '1.5' is not a group index (0, 1, 2, ...)"),
        (["0", "2"] * 6, 12, "groups [1] are empty"),
        (["0", "x"] * 6, 12, "line 2: 'x' is not a number"),
        (["0", "1"] * 6, 1, "--classes 1: a classifier has at least 2 classes"),
    ],
)
def test_group_labels_checks_each_file(tmp_path, capsys, lines, classes, error):
    """``ssal group --labels F --classes C``: a file that is not a grouping of C classes is
    one line on stderr and exit 2, and nothing is written."""
    path = tmp_path / "cifar100_2_group_similar_v2.txt"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "g.json"
    args = ["group", "--labels", str(path), "--classes", str(classes), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssal: error:") and error in err
    assert not out.exists()


def test_group_writes_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=(12, 12))
    np.save(tmp_path / "c.npy", conf)
    (tmp_path / "names.txt").write_text("\n".join(f"class{i}" for i in range(12)))
    out = tmp_path / "g.json"
    code = main(
        [
            "group",
            "--confusion",
            str(tmp_path / "c.npy"),
            "--groups",
            "3",
            "4",
            "--mode",
            "split",
            "--names",
            str(tmp_path / "names.txt"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    groupings, names = load_groupings(out, 12)
    assert names[3] == "class3"
    assert [(g.name, g.mode, g.num_groups) for g in groupings] == [
        ("split-3", "split", 3),
        ("split-4", "split", 4),
    ]


@pytest.mark.parametrize(
    "args,match",
    [
        (["group", "--confusion", "missing.npy", "--groups", "2", "--out", "x.json"], "not found"),
        (["group", "--confusion", "BAD", "--groups", "2", "--out", "x.json"], "not a .npy"),
        (["group", "--confusion", "SQUARE", "--groups", "50", "--out", "x.json"], "between 1 and"),
        (["group", "--groups", "2", "--out", "x.json"], "one of the arguments"),
        (["group", "--confusion", "SQUARE", "--out", "x.json"], "--groups is needed"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text("not numpy")
    np.save(tmp_path / "SQUARE.npy", np.ones((4, 4)))
    args = [a.replace("SQUARE", "SQUARE.npy") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and err.startswith("ssal: error:")


def test_subprocess_error_has_no_traceback(tmp_path):
    keep = tmp_path / "g.json"
    keep.write_text("precious")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssal.cli",
            "group",
            "--confusion",
            "nope.npy",
            "--groups",
            "2",
            "--out",
            str(keep),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert keep.read_text() == "precious"


def test_a_user_error_is_one_line_and_a_bare_value_error_is_a_bug(tmp_path, capsys, monkeypatch):
    import ssal.cli.models as models_cli
    from ssal.errors import UserError

    def refuse(args):  # noqa: ANN001
        raise UserError("--model nope: no such model")

    monkeypatch.setattr(models_cli, "run", refuse)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err == "ssal: error: --model nope: no such model\n"

    def broken(args):  # noqa: ANN001
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(models_cli, "run", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: an internal invariant broke" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ssal: error: this is a bug in ssal ") and "(ssal models)" in last
