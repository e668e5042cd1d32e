import json
import subprocess
import sys

import numpy as np
import pytest

from ssal.backbones.registry import get_entry, list_models
from ssal.cli import main
from ssal.grouping import load_groupings

PAPER_PARAMS = {n: get_entry(n).paper_params for n in list_models() if get_entry(n).paper_params}


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (base, _) in PAPER_PARAMS.items():
        r = rows[name]
        assert abs(r["params_baseline"] / 1e6 - base) / base < 0.03
        assert r["params_ssal"] > r["params_baseline"]
        assert len(r["positions"]) == len(r["layouts"]) == 3
    assert rows["resnet50"]["paper_positions"] == [[1, -1], [2, -1], [3, -1]]
    assert rows["densenet190-40"]["positions"] == ["block1", "block2:input", "block3:input"]
    assert (
        rows["timm/NAME"]["family"]
        and rows["torchvision/NAME"]["example"] == "torchvision/resnet18"
    )


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "densenet190-40" in out and "23.70M" in out


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
