"""`ssal data convert` round trips: every image and label comes back, once per split."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ssal.cli import main
from ssal.data import load_dataset
from ssal.data.shards import ShardDataModule, read_meta
from tests.test_data import write_cifar100, write_image_folder


def convert(dataset: str, data_dir: Path, out: Path, *options: str) -> int:
    """``ssal data convert --dataset D --data-dir DIR --out OUT [options]``."""
    return main(
        ["data", "convert", "--dataset", dataset, "--data-dir", str(data_dir), "--out", str(out)]
        + list(options)
    )


def digest(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, str]]:
    return sorted(
        (int(y), hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest())
        for x, y in zip(images, labels, strict=True)
    )


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("workers", [0, 2])
def test_cifar_round_trip(tmp_path, workers):
    write_cifar100(tmp_path / "data", n_train=200, n_test=30)
    out = tmp_path / "shards"
    assert (
        convert("cifar100", tmp_path / "data", out, "--shard-size", "64", "--heldout", "0.25") == 0
    )
    meta = read_meta(out)
    assert meta["splits"]["train"]["samples"] == 150 and meta["splits"]["heldout"]["samples"] == 50
    assert len(meta["splits"]["train"]["shards"]) == 3  # 64 + 64 + 22
    dm = ShardDataModule(str(out), batch_size=16, eval_batch_size=7, num_workers=workers)
    assert dm.num_classes == 100 and dm.in_channels == 3 and dm.image_size == 32
    source = load_dataset("cifar100", tmp_path / "data", "test")
    loader = dm.test_dataloader()
    images, labels = collect(loader)
    assert len(loader) == len(list(loader))  # the announced number of batches is right
    assert images.dtype == torch.uint8 and images.shape == (30, 3, 32, 32)
    assert digest(images, labels) == digest(source.images, source.labels)  # lossless, once each
    held_x, held_y = collect(dm.heldout_dataloader())
    train_x, train_y = collect(dm._loader("train", False))
    full = load_dataset("cifar100", tmp_path / "data", "train")
    assert digest(torch.cat([held_x, train_x]), torch.cat([held_y, train_y])) == digest(
        full.images, full.labels
    )
    # training: full batches, the same number on every rank
    batches = list(dm.train_dataloader())
    assert len(batches) == 150 // 16 // max(1, workers) * max(1, workers)
    assert all(b[0].shape == (16, 3, 32, 32) for b in batches)
    x = dm.prepare_batch(batches[0][0], train=True)
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)


def test_eval_shares_across_ranks_cover_everything_once(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data", n_train=20, n_test=50)
    out = tmp_path / "shards"
    convert("cifar100", tmp_path / "data", out, "--shard-size", "8")
    dm = ShardDataModule(str(out), eval_batch_size=5, num_workers=0)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(ShardDataModule, "replicas", lambda _m, r=rank: (2, r))
        shares.append(collect(dm.test_dataloader()))
    source = load_dataset("cifar100", tmp_path / "data", "test")
    both = digest(torch.cat([s[0] for s in shares]), torch.cat([s[1] for s in shares]))
    assert both == digest(source.images, source.labels)
    assert all(len(s[1]) > 0 for s in shares)


def test_image_folder_round_trip(tmp_path):
    write_image_folder(tmp_path / "folder")
    out = tmp_path / "shards"
    assert convert("imagefolder", tmp_path / "folder", out, "--shard-size", "3") == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and meta["splits"]["test"]["samples"] == 4
    dm = ShardDataModule(str(out), eval_batch_size=4, image_size=16, num_workers=0)
    images, labels = collect(dm.test_dataloader())
    assert images.shape == (4, 3, 16, 16) and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_convert_refuses_existing_output_and_missing_meta(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code = convert("cifar100", tmp_path, tmp_path / "out")
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    with pytest.raises(FileNotFoundError, match="ssal data convert"):
        ShardDataModule(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_fit_and_evaluate_from_shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar100(tmp_path / "data", n_train=200, n_test=30)
    out = tmp_path / "shards"
    convert("cifar100", tmp_path / "data", out, "--shard-size", "50", "--heldout", "0.2")
    config = tmp_path / "c.yaml"
    config.write_text(
        "trainer: {max_epochs: 1, accelerator: cpu, enable_progress_bar: false}\n"
        "data:\n  class_path: ssal.data.ShardDataModule\n"
        f"  init_args: {{data_dir: {out}, batch_size: 16, eval_batch_size: 8, num_workers: 0}}\n"
        "model: {network: {name: tiny-wrn}, groupings: {source: cifar100-superclasses},"
        " optim: {warmup_epochs: 1}}\n"
    )
    assert main(["fit", "--config", str(config)]) == 0
    ckpt = tmp_path / "runs/ssal/version_0/checkpoints/last.ckpt"
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", str(result)]) == 0
    assert json.loads(result.read_text())["num_samples"] == 30
