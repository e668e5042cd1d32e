import json
import math

import pytest

from ssal.cli import main
from ssal.study import epochs_to_reach, mean_std, paired_difference, summarize, t_quantile
from tests.test_data import write_cifar100


def test_t_quantiles():
    assert t_quantile(1) == 12.706 and t_quantile(2) == 4.303 and t_quantile(30) == 2.042
    assert t_quantile(60) == pytest.approx(2.000, abs=2e-3)  # table value 2.000
    assert t_quantile(120) == pytest.approx(1.980, abs=2e-3)


def test_paired_difference_by_hand():
    a = {0: 0.80, 1: 0.82, 2: 0.81, 7: 0.5}
    b = {0: 0.83, 1: 0.84, 2: 0.82}
    d = paired_difference(a, b)  # differences 0.03, 0.02, 0.01 over the shared seeds
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    half = 4.303 * 0.01 / math.sqrt(3)
    assert d["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    one = paired_difference({0: 0.5}, {0: 0.6})
    assert one["mean"] == pytest.approx(0.1) and one["ci95"] == [None, None]


def test_summarize_by_hand():
    def res(fine, joint, curve):
        return {"fine_accuracy": fine, "joint_accuracy": joint, "alpha": 0.3, "curve": curve}

    results = {
        ("base", 0): res(0.90, 0.90, [0.80, 0.85, 0.90]),
        ("base", 1): res(0.92, 0.92, [0.82, 0.88, 0.92]),
        ("ssal", 0): res(0.91, 0.93, [0.86, 0.91, 0.91]),
        ("ssal", 1): res(0.93, 0.95, [0.90, 0.90, 0.93]),
    }
    s = summarize(results, ["base", "ssal"])
    assert s["baseline_final_accuracy"] == pytest.approx(0.91)
    base, ssal = s["configs"]["base"], s["configs"]["ssal"]
    assert base["fine_accuracy"]["mean"] == pytest.approx(0.91)
    assert base["fine_accuracy"]["std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert ssal["epochs_to_baseline_final"]["per_seed"] == [2, 3]
    assert base["epochs_to_baseline_final"]["per_seed"] == [None, 3]
    assert base["epochs_to_baseline_final"]["never_reached"] == 1
    pair = s["pairs"][0]
    assert pair["fine_difference"]["mean"] == pytest.approx(0.01)
    assert pair["joint_vs_a_fine"]["mean"] == pytest.approx(0.03)
    assert ssal["curve_mean"] == pytest.approx([0.88, 0.905, 0.92])
    assert mean_std([1.0])["std"] != mean_std([1.0])["std"]  # NaN for one seed
    assert epochs_to_reach([0.1, 0.5], 0.6) is None


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tmp_path, capsys):
    write_cifar100(tmp_path / "data", n_train=200, n_test=40)
    common = (
        "trainer: {max_epochs: 2, accelerator: cpu, enable_model_summary: false}\n"
        "data:\n  class_path: ssal.data.InMemoryDataModule\n"
        f"  init_args: {{dataset: cifar100, data_dir: {tmp_path / 'data'}, batch_size: 32,"
        " heldout: 0.2}\n"
    )
    base, ssal = tmp_path / "base.yaml", tmp_path / "ssal.yaml"
    base.write_text(common + "model: {model: tiny-wrn, warmup_epochs: 1}\n")
    ssal.write_text(
        common + "model: {model: tiny-wrn, warmup_epochs: 1, groupings: cifar100-superclasses}\n"
    )
    out = tmp_path / "study"
    args = ["study", "--config", str(base), str(ssal), "--seeds", "0", "1", "--out", str(out)]
    assert main([*args, "--max-runs", "2"]) == 0  # stopped between runs
    first = {p: p.stat().st_mtime for p in out.glob("*/seed*/eval.json")}
    assert len(first) == 2
    assert json.loads((out / "study.json").read_text())["finished_runs"] == 2
    assert main(args) == 0  # resumes: only the two missing runs
    assert {p: p.stat().st_mtime for p in first} == first
    s = json.loads((out / "study.json").read_text())
    assert s["finished_runs"] == s["planned_runs"] == 4
    for name in ("base", "ssal"):
        c = s["configs"][name]
        assert c["seeds"] == [0, 1] and len(c["curves"][0]) == 2
        fine = [
            json.loads((out / name / f"seed{k}" / "eval.json").read_text())["fine_accuracy"]
            for k in (0, 1)
        ]
        assert c["fine_accuracy"]["mean"] == pytest.approx(sum(fine) / 2)
    assert s["pairs"][0]["a"] == "base" and s["pairs"][0]["fine_difference"]["n"] == 2
    printed = capsys.readouterr().out
    assert "paired differences" in printed and "+JP" in printed
