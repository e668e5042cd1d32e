import torch

from ssal.backbones import create_model
from ssal.evaluate import evaluate_model
from ssal.predict import joint_log_probs
from tests.conftest import modulo_groupings


def _data(n=24, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return [(images[i : i + 8], labels[i : i + 8]) for i in range(0, n, 8)]


def test_evaluate_model_by_hand_and_memory_format_kept():
    torch.manual_seed(0)
    model = create_model("tiny-wrn", 10, modulo_groupings(10, [2, 3, 5])).eval()
    loader = _data()
    seen, layouts = [], []
    hook = model.register_forward_pre_hook(
        lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    r = evaluate_model(model, loader, lambda x: x, 10, 0.5, on_batch=lambda o, y: seen.append(y))
    hook.remove()
    assert layouts == [True, True, True]  # every batch ran in channels_last
    # the figures equal a plain computation over the whole set
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    with torch.no_grad():
        out = model(x)
        joint = joint_log_probs(out.logits, out.branch_logits, model.group_indices, 0.5)
    assert r["num_samples"] == 24 and len(seen) == 3 and torch.equal(torch.cat(seen), y)
    assert abs(r["fine_accuracy"] - (out.logits.argmax(1) == y).float().mean().item()) < 1e-6
    assert abs(r["joint_accuracy"] - (joint.argmax(1) == y).float().mean().item()) < 1e-6
    # the inputs ran in channels_last, the weights were never converted (not even for the
    # duration): contiguous ones stay contiguous, in the same storage...
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    during = []
    hook = model.register_forward_pre_hook(lambda m, args: during.append(conv.is_contiguous()))
    model.train()
    evaluate_model(model, loader, lambda x: x, 10, 0.5)
    hook.remove()
    assert during == [True, True, True]
    assert storage == {n: p.data_ptr() for n, p in model.named_parameters()}
    assert model.training  # ran in eval mode, handed back in the mode it came in
    # ...and channels_last ones (a training module on a GPU) stay channels_last
    model.eval().to(memory_format=torch.channels_last)
    again = evaluate_model(model, loader, lambda x: x, 10, 0.5)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not model.training
    assert again["fine_accuracy"] == r["fine_accuracy"]
