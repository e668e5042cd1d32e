import numpy as np
import torch

from ssal.predict import joint_log_probs, joint_predict, structured_predict


def test_alpha_zero_is_softmax_of_fine():
    fine = torch.randn(4, 6)
    p = joint_predict(fine, [torch.randn(4, 2)], [np.arange(6) % 2], alpha=0.0)
    torch.testing.assert_close(p, torch.softmax(fine, -1))


def test_joint_by_hand():
    fine = torch.tensor([[2.0, 1.0, 0.0, 0.5]])
    b = torch.tensor([[0.0, 3.0]])
    g = np.array([0, 0, 1, 1])
    alpha = 0.5
    pf = torch.softmax(fine, -1)[0]
    pb = torch.softmax(b, -1)[0]
    expected = torch.stack([pf[c] * pb[g[c]] ** alpha for c in range(4)])
    expected = expected / expected.sum()
    torch.testing.assert_close(joint_predict(fine, [b], [g], alpha)[0], expected)


def test_rows_sum_to_one_and_stable_for_huge_logits():
    fine = torch.randn(8, 10) * 1e4
    branches = [torch.randn(8, 2) * 1e4, torch.randn(8, 5) * 1e4]
    groupings = [np.arange(10) % 2, np.arange(10) % 5]
    p = joint_predict(fine, branches, groupings, alpha=[0.3, 0.5])
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(8))
    assert torch.isfinite(joint_log_probs(fine, branches, groupings, 0.4)).all()


def test_branches_can_flip_the_prediction():
    fine = torch.tensor([[1.0, 0.9]])
    b = torch.tensor([[-5.0, 5.0]])  # branch sure the class is in group 1 = {class 1}
    assert joint_predict(fine, [b], [np.array([0, 1])], 1.0).argmax().item() == 1
    assert joint_predict(fine, [b], [np.array([0, 1])], 0.0).argmax().item() == 0


def test_structured_prediction_agreement():
    g1, g2 = np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])
    fine = torch.tensor([[5.0, 0, 0, 0], [0, 0, 5.0, 0]])
    b1 = torch.tensor([[4.0, 0], [4.0, 0]])  # image 2: says group 0 but class 2 is in group 1
    b2 = torch.tensor([[4.0, 0, 0], [0, 0, 4.0]])
    s = structured_predict(fine, [b1, b2], [g1, g2], alpha=0.3)
    assert s.fine_class.tolist() == [0, 2]
    assert s.branch_group.tolist() == [[0, 0], [0, 2]]
    assert s.agree.tolist() == [[True, True], [False, True]]
    assert s.consistent.tolist() == [True, False]
    torch.testing.assert_close(s.fine_prob, torch.softmax(fine, -1).max(-1).values)
    assert s.joint_class.tolist() == [0, 2]


def test_metrics_alpha_grid_matches_joint_prediction():
    from ssal.metrics import SSALMetrics

    torch.manual_seed(3)
    groupings = [np.arange(12) % 2, np.arange(12) % 5]
    fine, branches = torch.randn(64, 12), [torch.randn(64, 2) * 3, torch.randn(64, 5) * 3]
    target = torch.randint(0, 12, (64,))
    m = SSALMetrics([torch.as_tensor(g) for g in groupings], 12, alpha=0.3)
    m.update(fine, branches, target)
    by_alpha = m.compute()["joint_accuracy_by_alpha"]
    for a in (0.0, 0.3, 0.65, 1.0):
        jp = joint_log_probs(fine, branches, groupings, a).argmax(-1)
        assert by_alpha[f"{a:g}"] == (jp == target).float().mean().item()
