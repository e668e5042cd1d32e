import math

import numpy as np
import pytest
import torch

from ssal import analysis
from ssal.grouping import Grouping
from ssal.metrics import SSALMetrics
from ssal.predict import structured_predict

# Six images, four classes, two groupings. Worked out by hand below.
G1 = np.array([0, 0, 1, 1])
G2 = np.array([0, 1, 2, 2])
LABELS = np.array([0, 1, 2, 3, 0, 2])
FINE = np.array([0, 0, 2, 1, 0, 3])  # right at images 0, 2, 4
PROB = np.array([0.9, 0.6, 0.8, 0.5, 0.7, 0.4])
BRANCH = np.array([[0, 0], [0, 1], [1, 2], [1, 2], [1, 0], [1, 2]])
JOINT = np.array([0, 1, 2, 1, 1, 2])  # right at images 0, 1, 2, 5
# Disagreement with the fine class's group g_i[fine]:
#   image 1: branch 2 says 1, g2[0] = 0               -> 1 branch disagrees
#   image 3: g1[1] = 0 vs 1, g2[1] = 1 vs 2             -> 2 branches disagree
#   image 4: g1[0] = 0 vs 1                            -> 1 branch disagrees
#   images 0, 2, 5: all agree (kept)


def test_disagreements_and_head_correctness():
    d = analysis.disagreements(FINE, BRANCH, [G1, G2])
    assert d.sum(axis=1).tolist() == [0, 1, 0, 2, 1, 0]
    correct = analysis.head_correctness(FINE, BRANCH, LABELS, [G1, G2])
    assert correct.astype(int).tolist() == [
        [1, 0, 1, 0, 1, 0],  # fine head: fine == label
        [1, 1, 1, 1, 0, 1],  # branch 1: group == g1[label]
        [1, 1, 1, 1, 1, 1],  # branch 2: group == g2[label]
    ]
    names = analysis.head_names([Grouping(G1, name="a"), G2])
    assert names == ["fine head", "branch 1 (a)", "branch 2"]


def test_set_aside_by_hand():
    s = analysis.set_aside_analysis(FINE, BRANCH, LABELS, [G1, G2], JOINT)
    assert s["num_samples"] == 6 and s["kept"] == 3 and s["set_aside"] == 3
    assert s["fine_accuracy"] == pytest.approx(3 / 6)
    assert s["kept_fraction"] == pytest.approx(0.5)
    assert s["kept_accuracy"] == pytest.approx(2 / 3)  # images 0, 2 right; 5 wrong
    assert s["set_aside_fine_accuracy"] == pytest.approx(1 / 3)  # image 4
    assert s["set_aside_joint_accuracy"] == pytest.approx(1 / 3)  # image 1
    assert s["set_aside_branch_accuracy"] == pytest.approx([2 / 3, 1.0])


def test_set_aside_without_branches_keeps_everything():
    s = analysis.set_aside_analysis(FINE, np.zeros((6, 0)), LABELS, [])
    assert s["kept"] == 6 and s["set_aside"] == 0
    assert s["kept_accuracy"] == pytest.approx(0.5)
    assert math.isnan(s["set_aside_fine_accuracy"]) and s["set_aside_branch_accuracy"] == []


def test_set_aside_matches_streaming_metrics():
    torch.manual_seed(1)
    groupings = [np.arange(10) % 2, np.arange(10) % 5]
    logits = torch.randn(300, 10)
    branches = [torch.randn(300, 2) * 2, torch.randn(300, 5) * 2]
    labels = torch.randint(0, 10, (300,))
    m = SSALMetrics([torch.as_tensor(g) for g in groupings], 10, alpha=0.4)
    m.update(logits, branches, labels)
    expected = m.compute()["set_aside"]
    s = structured_predict(logits, branches, groupings, 0.4)
    got = analysis.set_aside_analysis(
        s.fine_class, s.branch_group, labels, groupings, s.joint_class
    )
    for key in ("kept_fraction", "kept_accuracy", "set_aside_fine_accuracy"):
        assert got[key] == pytest.approx(expected[key])
    assert got["set_aside"] == expected["set_aside"]
    assert got["set_aside_joint_accuracy"] == pytest.approx(expected["set_aside_joint_accuracy"])
    assert got["set_aside_branch_accuracy"] == pytest.approx(expected["set_aside_branch_accuracy"])


def test_pairwise_table_by_hand():
    correct = analysis.head_correctness(FINE, BRANCH, LABELS, [G1, G2])
    t = analysis.pairwise_table(correct, ["fine", "b1", "b2"])
    # right: fine {0,2,4}, b1 {0,1,2,3,5}, b2 all six
    np.testing.assert_allclose(
        t.given_right,
        [[1, 2 / 3, 1], [2 / 5, 1, 1], [3 / 6, 5 / 6, 1]],
    )
    # wrong: fine {1,3,5}, b1 {4}, b2 never
    np.testing.assert_allclose(t.given_wrong[:2], [[0, 1, 1], [1, 0, 1]])
    assert np.isnan(t.given_wrong[2]).all()
    assert t.num_right.tolist() == [3, 5, 6] and t.num_wrong.tolist() == [3, 1, 0]
    with pytest.raises(ValueError, match="head names"):
        analysis.pairwise_table(correct, ["one"])


def test_risk_coverage_by_confidence_by_hand():
    ok = FINE == LABELS
    rc = analysis.risk_coverage_by_confidence(ok, PROB)
    # kept in order 0 (R), 2 (R), 4 (R), 1 (W), 3 (W), 5 (W)
    np.testing.assert_allclose(rc.coverage, np.arange(1, 7) / 6)
    np.testing.assert_allclose(rc.risk, [0, 0, 0, 1 / 4, 2 / 5, 3 / 6])
    assert rc.aurc == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 6)


def test_risk_coverage_by_disagreement_by_hand():
    ok = FINE == LABELS
    n_dis = analysis.disagreements(FINE, BRANCH, [G1, G2]).sum(1)
    rc = analysis.risk_coverage_by_disagreement(ok, n_dis, PROB)
    # no disagreement: 0 (.9 R), 2 (.8 R), 5 (.4 W); one: 4 (.7 R), 1 (.6 W); two: 3 (W)
    np.testing.assert_allclose(rc.risk, [0, 0, 1 / 3, 1 / 4, 2 / 5, 3 / 6])
    assert rc.aurc == pytest.approx((1 / 3 + 1 / 4 + 2 / 5 + 3 / 6) / 6)


def test_risk_coverage_ties_are_kept_together_and_averaged():
    rc = analysis.risk_coverage([1, 0, 1, 1], [0.9, 0.9, 0.7, 0.7])
    np.testing.assert_allclose(rc.coverage, [0.5, 1.0])
    np.testing.assert_allclose(rc.risk, [0.5, 0.25])
    # random tie-breaking in expectation: k=1: 1/2, k=2: 1/2, k=3: 1/3, k=4: 1/4
    assert rc.aurc == pytest.approx((0.5 + 0.5 + 1 / 3 + 0.25) / 4)
    swapped = analysis.risk_coverage([0, 1, 1, 1], [0.9, 0.9, 0.7, 0.7])
    assert swapped.aurc == pytest.approx(rc.aurc)
    perfect = analysis.risk_coverage([1, 1, 0, 0], [4, 3, 2, 1])
    assert perfect.aurc == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    with pytest.raises(ValueError):
        analysis.risk_coverage([], [])


def test_coarse_accuracy_and_mistake_severity_by_hand():
    assert analysis.coarse_accuracy(FINE, LABELS, G1) == pytest.approx(5 / 6)
    assert analysis.coarse_accuracy(FINE, LABELS, Grouping(G2)) == pytest.approx(4 / 6)
    # mistakes: 0 for 1 (differs at G2 only: 1), 1 for 3 (both: 2), 3 for 2 (neither: 0)
    sev = analysis.mistake_severity(FINE, LABELS, [G1, G2])
    assert sev.num_mistakes == 3 and sev.mean == pytest.approx(1.0)
    assert sev.histogram.tolist() == [1, 1, 1]
    h = analysis.hierarchy_metrics(FINE, LABELS, [G1, G2], ["coarse", "fine"])
    assert [lv["num_groups"] for lv in h["levels"]] == [2, 3]
    assert h["levels"][0]["coarse_accuracy"] == pytest.approx(5 / 6)
    assert h["mean_severity"] == pytest.approx(1.0) and h["severity_histogram"] == [1, 1, 1]
    none = analysis.mistake_severity(LABELS, LABELS, [G1])
    assert none.num_mistakes == 0 and math.isnan(none.mean)


def test_confusion_per_class_and_group_order():
    m = analysis.confusion_matrix(FINE, LABELS, 4)
    assert m.sum() == 6 and np.trace(m) == 3
    assert m[3, 1] == 1 and m[2, 3] == 1 and m[1, 0] == 1
    acc = analysis.per_class_accuracy(FINE, LABELS, 4)
    np.testing.assert_allclose(acc, [1.0, 0.0, 0.5, 0.0])
    assert np.isnan(analysis.per_class_accuracy([0], [0], 2)[1])
    assert analysis.group_order([np.array([1, 0, 1, 0])]).tolist() == [1, 3, 0, 2]
    two = analysis.group_order([np.array([1, 0, 1, 0]), np.array([0, 1, 0, 0])])
    assert two.tolist() == [3, 1, 0, 2]
    assert analysis.group_order([], 3).tolist() == [0, 1, 2]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="branch_group"):
        analysis.disagreements(FINE, BRANCH[:, :1], [G1, G2])
    with pytest.raises(ValueError, match="differ"):
        analysis.head_correctness(FINE, BRANCH, LABELS[:3], [G1, G2])
