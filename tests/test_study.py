import json
import math

import pytest

from ssal.cli import main
from ssal.report.study_page import build_study_report, verdict
from ssal.study import (
    convergence,
    epochs_to_reach,
    mean_std,
    paired_difference,
    summarize,
    t_quantile,
)
from tests.conftest import write_tiny_config
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
        branches = [0.95] if joint != fine else []
        return {
            "fine_accuracy": fine,
            "joint_accuracy": joint,
            "alpha": 0.3,
            "curve": curve,
            "branch_accuracy": branches,
        }

    results = {
        ("base", 0): res(0.90, 0.90, [0.80, 0.85, 0.90]),
        ("base", 1): res(0.92, 0.92, [0.82, 0.88, 0.92]),
        ("ssal", 0): res(0.91, 0.93, [0.86, 0.91, 0.91]),
        ("ssal", 1): res(0.93, 0.95, [0.90, 0.916, 0.93]),
    }
    s = summarize(results, ["base", "ssal"])
    assert s["baseline_final_accuracy"] == pytest.approx(0.91)
    base, ssal = s["configs"]["base"], s["configs"]["ssal"]
    assert base["fine_accuracy"]["mean"] == pytest.approx(0.91)
    assert base["fine_accuracy"]["std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    # per seed pair: ssal seed 0 reaches base seed 0's final 0.90 at epoch 2, seed 1 reaches
    # 0.92 at epoch 3; every baseline seed reaches its own final accuracy (at the last epoch)
    assert ssal["epochs_to_baseline_final"]["per_seed"] == [2, 3]
    assert base["epochs_to_baseline_final"]["per_seed"] == [3, 3]
    assert base["epochs_to_baseline_final"]["never_reached"] == 0
    assert base["epochs_to_baseline_final"]["no_curve"] == 0
    # at 99.5%: 0.8955 and 0.9154: ssal at epochs 2 and 2, the baseline at 3 and 3
    assert ssal["epochs_to_baseline_final_tolerance"]["per_seed"] == [2, 2]
    assert base["epochs_to_baseline_final_tolerance"]["per_seed"] == [3, 3]
    epochs = s["vs_baseline"]["ssal"]["epochs_to_baseline_final_tolerance_difference"]
    assert epochs["mean"] == pytest.approx(-1.0) and epochs["ci95"] == pytest.approx([-1, -1])
    exact = s["vs_baseline"]["ssal"]["epochs_to_baseline_final_difference"]
    assert exact["mean"] == pytest.approx(-0.5) and exact["n"] == 2
    pair = s["pairs"][0]
    assert pair["fine_difference"]["mean"] == pytest.approx(0.01)
    assert pair["joint_vs_a_fine"]["mean"] == pytest.approx(0.03)
    assert ssal["curve_mean"] == pytest.approx([0.88, 0.913, 0.92])
    assert ssal["per_seed"] == {"fine": [0.91, 0.93], "joint": [0.93, 0.95]}
    assert ssal["has_branches"] and not base["has_branches"]
    vs = s["vs_baseline"]["ssal"]  # both heads against the baseline's fine head, seed by seed
    assert vs["fine_difference"]["mean"] == pytest.approx(0.01)
    assert vs["fine_difference"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert vs["joint_difference"]["mean"] == pytest.approx(0.03)
    assert list(s["vs_baseline"]) == ["ssal"]
    with pytest.raises(ValueError, match="not one of the configs"):
        summarize(results, ["base", "ssal"], baseline="other")
    assert mean_std([1.0])["std"] != mean_std([1.0])["std"]  # NaN for one seed
    assert epochs_to_reach([0.1, 0.5], 0.6) is None


def test_convergence_counts_never_as_one_more_epoch():
    curves = {0: [0.5, 0.7, 0.8], 1: [0.6, 0.65, 0.66], 2: [], 3: [0.9]}
    targets = {0: 0.75, 1: 0.7, 2: 0.7}  # seed 3 has no baseline to pair with
    c = convergence(curves, targets)
    assert c["seeds"] == [0, 1] and c["per_seed"] == [3, None] and c["counted"] == [3, 4]
    assert c["never_reached"] == 1 and c["no_curve"] == 2
    assert c["mean"] == pytest.approx(3.5) and c["n"] == 2
    # at 99.5% of 0.7 (0.6965) seed 1 still never gets there; at 90% (0.63) it does at 2
    assert convergence(curves, targets, 0.9)["per_seed"] == [2, 2]


def test_records_of_another_setting_are_refused(tmp_path):
    from ssal.study import StudyRun, load_results, read_records

    config = tmp_path / "a.yaml"
    config.write_text("trainer: {max_epochs: 2}\n")
    run = StudyRun("a", str(config), 0)
    record = {"name": "a", "seed": 0, "fine_accuracy": 0.9, "fingerprint": run.fingerprint()}
    assert load_results([run], tmp_path, {("a", 0): record}) == {("a", 0): record}
    other = StudyRun("a", str(config), 0, ("--trainer.max_epochs=3",))
    with pytest.raises(ValueError, match="another config file or other options"):
        load_results([other], tmp_path, {("a", 0): record})
    config.write_text("trainer: {max_epochs: 3}\n")
    with pytest.raises(ValueError, match="another config file or other options"):
        load_results([run], tmp_path, {("a", 0): record})
    # a study.json without run records is refused (one line), not guessed at
    (tmp_path / "study.json").write_text(json.dumps(_study([0.90, 0.91], [0.92, 0.925])))
    with pytest.raises(ValueError, match="no runs recorded"):
        read_records(tmp_path)


def test_a_run_past_the_budget_is_stopped(tmp_path):
    import sys
    import time

    from ssal.study import OutOfTime, _call

    start = time.monotonic()
    with open(tmp_path / "log.txt", "w") as log, pytest.raises(OutOfTime):
        _call([sys.executable, "-c", "import time; time.sleep(30)"], log, None, start + 1)
    assert time.monotonic() - start < 10


def _strip_times(summary: dict) -> dict:
    """A summary without what differs between two runs of the same study: times, devices."""
    s = json.loads(json.dumps(summary))
    for key in ("runs", "stopped"):
        s.pop(key, None)
    for c in s["configs"].values():
        c.pop("seconds")
    return s


@pytest.mark.slow
def test_study_stopped_by_its_budget_resumes_from_study_json_alone(tmp_path, capsys, monkeypatch):
    import shutil

    import ssal.study

    write_cifar100(tmp_path / "data", n_train=200, n_test=40)
    base = write_tiny_config(tmp_path / "base.yaml", tmp_path / "data")
    ssal_config = write_tiny_config(
        tmp_path / "ssal.yaml",
        tmp_path / "data",
        model={"groupings": {"source": "cifar100-superclasses"}},
    )

    def study(out, *extra):
        args = ["study", "--config", str(base), str(ssal_config), "--name", "base", "ssal"]
        return main([*args, "--seeds", "0", "1", "--out", str(tmp_path / out), *extra])

    # a clock on which every finished run takes 1000 s: a budget of 25 minutes (1500 s) lets
    # two runs finish, and the third is not started (1000 s more would end past it)
    finished = lambda: 1000.0 * len(list(tmp_path.glob("stopped/*/seed*/eval.json")))  # noqa: E731
    monkeypatch.setattr(ssal.study, "_now", finished)
    assert study("stopped", "--budget-minutes", "25") == 0
    s = json.loads((tmp_path / "stopped" / "study.json").read_text())
    assert s["finished_runs"] == 2 and s["stopped"]["runs_left"] == ["base seed 1", "ssal seed 1"]
    assert [(r["name"], r["seed"]) for r in s["runs"]] == [("base", 0), ("ssal", 0)]
    assert s["runs"][0]["device"] == "cpu" and len(s["runs"][1]["curve"]) == 2
    assert "stopped by the time budget of 25 minutes: 2 runs left" in capsys.readouterr().out
    monkeypatch.undo()

    # the next session: study.json alone in a fresh folder; only the missing runs are run
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "stopped" / "study.json", tmp_path / "resumed" / "study.json")
    assert study("resumed", "--max-runs", "1") == 0  # stopped between runs another way
    assert json.loads((tmp_path / "resumed" / "study.json").read_text())["finished_runs"] == 3
    assert study("resumed") == 0
    assert sorted(p.parent.name for p in tmp_path.glob("resumed/*/seed*/eval.json")) == [
        "seed1",
        "seed1",
    ]
    resumed = json.loads((tmp_path / "resumed" / "study.json").read_text())
    assert resumed["finished_runs"] == resumed["planned_runs"] == 4 and "stopped" not in resumed
    assert [(r["name"], r["seed"]) for r in resumed["runs"]] == [
        ("base", 0),
        ("ssal", 0),
        ("base", 1),
        ("ssal", 1),
    ]
    first = {p: p.stat().st_mtime for p in tmp_path.glob("resumed/*/seed*/eval.json")}
    assert study("resumed") == 0  # nothing left to run
    assert {p: p.stat().st_mtime for p in first} == first
    printed = capsys.readouterr().out
    assert "minus base's +TR" in printed and "+JP" in printed
    assert "epochs to base's final +TR of the same seed" in printed

    # the same summary as one uninterrupted study
    assert study("whole") == 0
    whole = json.loads((tmp_path / "whole" / "study.json").read_text())
    assert _strip_times(resumed) == _strip_times(whole)
    for name in ("base", "ssal"):
        c = whole["configs"][name]
        assert c["seeds"] == [0, 1] and len(c["curves"][0]) == 2
        assert c["epochs_to_baseline_final"]["n"] == 2
    assert whole["configs"]["base"]["epochs_to_baseline_final"]["never_reached"] == 0
    # a changed config is not mixed into the study
    ssal_config.write_text(ssal_config.read_text().replace("max_epochs: 2", "max_epochs: 3"))
    assert study("resumed") == 2
    assert "another config file or other options" in capsys.readouterr().err


def _study(seeds_b: list[float], seeds_s: list[float], curves: bool = True) -> dict:
    results = {}
    for k, (fb, fs) in enumerate(zip(seeds_b, seeds_s, strict=True)):
        results[("baseline", k)] = {
            "fine_accuracy": fb,
            "joint_accuracy": fb,
            "alpha": 0.3,
            "curve": [fb - 0.1, fb] if curves else [],
            "branch_accuracy": [],
        }
        results[("ssal", k)] = {
            "fine_accuracy": fs,
            "joint_accuracy": fs + 0.01,
            "alpha": 0.1,
            "curve": [fs - 0.05, fs] if curves else [],
            "branch_accuracy": [0.97],
        }
    return summarize(results, ["baseline", "ssal"])


def test_verdict_follows_the_interval():
    gain = paired_difference({0: 0.80, 1: 0.81, 2: 0.82}, {0: 0.83, 1: 0.835, 2: 0.845})
    loss = paired_difference({0: 0.83, 1: 0.835, 2: 0.845}, {0: 0.80, 1: 0.81, 2: 0.82})
    unclear = paired_difference({0: 0.80, 1: 0.81, 2: 0.82}, {0: 0.83, 1: 0.79, 2: 0.82})
    assert gain["ci95"][0] > 0 and verdict(gain) == "gain"
    assert loss["ci95"][1] < 0 and verdict(loss) == "loss"
    assert verdict(unclear) == "no difference"
    assert verdict(paired_difference({0: 0.5}, {0: 0.6})) == "needs 2+ seeds"
    assert verdict(paired_difference({0: 0.5}, {1: 0.6})) == "no paired seeds"


def test_study_report_holds_what_it_plots():
    summary = _study([0.90, 0.91, 0.92], [0.92, 0.925, 0.935])
    page, data = build_study_report(summary, "study <x>")
    # differences, accuracy, convergence, epochs to the baseline's final (paired)
    assert page.count("data:image/png;base64,") == 4
    assert "<title>study &lt;x&gt;</title>" in page and "<h1>study <x>" not in page
    embedded = json.loads(page.split('id="ssal-data">')[1].split("</script>")[0])
    assert embedded == json.loads(json.dumps(data))
    # the forest plot's rows are the paired differences in points, with their intervals
    rows = {(r["config"], r["head"]): r for r in data["differences"]["rows"]}
    d = summary["vs_baseline"]["ssal"]["joint_difference"]
    assert rows[("ssal", "+JP")]["mean"] == pytest.approx(100 * d["mean"])
    assert rows[("ssal", "+JP")]["ci95"] == pytest.approx([100 * v for v in d["ci95"]])
    assert ("baseline", "+TR") not in rows
    # the accuracy plot: each seed, and mean ± std, in points; no +JP for the baseline
    assert data["accuracy"]["fine"]["ssal"]["seeds"] == pytest.approx([92.0, 92.5, 93.5])
    assert data["accuracy"]["fine"]["baseline"]["std"] == pytest.approx(1.0)
    assert "baseline" not in data["accuracy"]["joint"]
    # convergence: the mean curve per epoch, and the baseline's final accuracy as the target
    conv = data["convergence"]
    assert conv["target"] == pytest.approx(91.0)
    assert conv["configs"]["ssal"]["mean"] == pytest.approx([87.6667, 92.6667], abs=1e-3)
    assert "gain" in page  # +JP: +1.67 points, interval above zero with these seeds


def test_study_report_without_curves_or_intervals():
    summary = _study([0.90], [0.91], curves=False)
    reach = summary["configs"]["ssal"]["epochs_to_baseline_final"]
    assert reach["no_curve"] == 1 and reach["never_reached"] == 0  # no curve: not "never"
    page, data = build_study_report(summary, "one seed")
    assert data["convergence"]["configs"] == {}
    assert "test accuracy per epoch: nothing to plot" in page
    assert "needs 2+ seeds" in page and "(one seed)" in page


def test_report_cli_on_a_study(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    summary = _study([0.90, 0.91], [0.92, 0.925])
    (folder / "study.json").write_text(json.dumps(summary))
    assert main(["report", str(folder), "--json", str(tmp_path / "plotted.json")]) == 0
    captured = capsys.readouterr()
    assert "90.50 ± 0.71" in captured.out  # the baseline's +TR over its two seeds
    assert "+2.75 [" in captured.out  # ssal's +JP minus the baseline's +TR, with its interval
    assert (folder / "report.html").is_file() and "report.html" in captured.err
    plotted = json.loads((tmp_path / "plotted.json").read_text())
    assert plotted["kind"] == "study" and plotted["summary"]["baseline"] == "baseline"
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(folder / "study.json"), "--out", str(out)]) == 0
    assert out.is_file()
    # mistakes end in one line, exit 2, and leave the study alone
    before = (folder / "study.json").read_text()
    old = dict(summary)
    del old["vs_baseline"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["report", str(tmp_path / "old.json")]) == 2
    assert "older ssal" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "not a readable study.json" in capsys.readouterr().err
    assert main(["report", str(folder), str(tmp_path)]) == 2
    assert "one study" in capsys.readouterr().err
    running = tmp_path / "running"  # a study whose first run has not finished
    (running / "base" / "seed0").mkdir(parents=True)
    (running / "base" / "seed0" / "log.txt").write_text("")
    assert main(["report", str(running)]) == 2
    assert "without study.json yet" in capsys.readouterr().err
    assert (folder / "study.json").read_text() == before
