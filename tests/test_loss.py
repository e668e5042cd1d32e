import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssal.loss import SSALLoss, smoothing_for
from ssal.model import SSALOutput


def ce_soft(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()


def test_total_is_fine_plus_weighted_branches_by_hand():
    g1, g2 = np.array([0, 0, 1, 1]), np.array([0, 1, 2, 0])
    fine = torch.randn(5, 4)
    b1, b2 = torch.randn(5, 2), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 2])
    parts = SSALLoss([g1, g2], [0.5, 2.0])(SSALOutput(fine, (b1, b2)), y)
    f = F.cross_entropy(fine, y)
    l1 = F.cross_entropy(b1, torch.tensor([0, 0, 1, 1, 1]))
    l2 = F.cross_entropy(b2, torch.tensor([0, 1, 2, 0, 2]))
    torch.testing.assert_close(parts.fine, f)
    torch.testing.assert_close(parts.branches[0], l1)
    torch.testing.assert_close(parts.branches[1], l2)
    torch.testing.assert_close(parts.total, f + 0.5 * l1 + 2.0 * l2)


def test_paper_smoothing_puts_1_minus_e_on_true_class():
    e, k = 0.1, 5
    logits = torch.randn(3, k)
    y = torch.tensor([4, 0, 2])
    t = torch.full((3, k), e / (k - 1))
    t[torch.arange(3), y] = 1 - e
    got = SSALLoss([], [], label_smoothing=e, convention="paper")(logits, y)
    torch.testing.assert_close(got.total, ce_soft(logits, t))
    assert smoothing_for(e, k, "paper") == pytest.approx(e * k / (k - 1))


def test_torch_smoothing_matches_pytorch_and_applies_to_branches():
    g = np.array([0, 1, 1])
    fine, br = torch.randn(4, 3), torch.randn(4, 2)
    y = torch.tensor([0, 1, 2, 0])
    got = SSALLoss([g], [1.0], label_smoothing=0.2)(SSALOutput(fine, (br,)), y)
    torch.testing.assert_close(got.fine, F.cross_entropy(fine, y, label_smoothing=0.2))
    coarse = torch.tensor([0, 1, 1, 0])
    # paper convention on the 2-group branch: true 0.8, other 0.2
    paper = SSALLoss([g], [1.0], label_smoothing=0.2, convention="paper")(
        SSALOutput(fine, (br,)), y
    )
    t = torch.where(F.one_hot(coarse, 2).bool(), 0.8, 0.2)
    torch.testing.assert_close(paper.branches[0], ce_soft(br, t))


def test_loss_errors_and_device_buffers():
    with pytest.raises(ValueError, match="2 branch weights for 1 groupings"):
        SSALLoss([np.array([0, 1])], [1.0, 2.0])
    with pytest.raises(ValueError, match="convention"):
        SSALLoss([], [], label_smoothing=0.1, convention="keras")
    loss = SSALLoss([np.array([0, 1])], 1.0)
    with pytest.raises(ValueError, match="model has 0 branches"):
        loss(SSALOutput(torch.randn(2, 2), ()), torch.tensor([0, 1]))
    assert "group_index_0" in dict(loss.named_buffers())
