import json
from pathlib import Path

import pytest

from ssal.cli import main
from tests.conftest import have_fashion_mnist, require


@pytest.mark.slow
def test_demo_short_run_writes_everything(tmp_path, capsys):
    require(have_fashion_mnist(), "Debian's dataset-fashion-mnist")
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--epochs", "2", "--train-size", "4000", "--quiet"]) == 0
    )
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "baseline_accuracy",
        "tr_accuracy",
        "jp_accuracy",
        "groupings",
        "baseline_checkpoint",
        "ssal_checkpoint",
        "alpha",
        "set_aside",
    ):
        assert key in s
    assert s["test_size"] == 10000 and s["train_size"] == 3600
    assert 0.5 < s["baseline_accuracy"] <= 1 and 0.5 < s["jp_accuracy"] <= 1  # chance is 0.1
    assert Path(s["baseline_checkpoint"]).is_file() and Path(s["ssal_checkpoint"]).is_file()
    assert str(s["alpha"]) in s["heldout_joint_accuracy_by_alpha"] or s["alpha"] == 0
    assert [g["num_groups"] for g in s["groupings_detail"]] == [2, 3, 5]
    assert (out / "baseline" / "logs" / "metrics.csv").is_file()
    printed = capsys.readouterr().out
    assert "baseline" in printed and "+JP" in printed and "agree" in printed
    # the SSAL checkpoint evaluates to the demo's +TR figure
    ev = tmp_path / "ev.json"
    assert main(["evaluate", "--checkpoint", s["ssal_checkpoint"], "--json", str(ev)]) == 0
    evaluated = json.loads(ev.read_text())
    assert evaluated["fine_accuracy"] == pytest.approx(s["tr_accuracy"])
    # the alpha chosen on the held-out split is stored in the checkpoint
    assert evaluated["alpha"] == s["alpha"]
    assert evaluated["joint_accuracy"] == pytest.approx(s["jp_accuracy"])
    assert Path(s["report"]).is_file()
    # a second demo into the same folder refuses (one line), and leaves the first as it was
    capsys.readouterr()
    before = (out / "summary.json").read_bytes()
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "holds an earlier demo" in err[0] and "--overwrite" in err[0]
    assert (out / "summary.json").read_bytes() == before


def test_near_chance_baseline_gets_a_warning():
    from ssal.demo import _near_chance

    assert _near_chance(0.1, 10) and "near chance" in _near_chance(0.12, 10)
    assert _near_chance(0.6, 10) is None
