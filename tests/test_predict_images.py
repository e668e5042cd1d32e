import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssal.card import Preprocessing
from ssal.checkpoint import load_checkpoint
from ssal.cli import main
from ssal.grouping import Grouping, save_groupings
from ssal.inference import describe_predictions, load_image, predict_tensors
from ssal.predict import structured_predict
from ssal.train import SSALModule

NAMES = [f"class{c}" for c in range(10)]
G2 = np.arange(10) % 2
G5 = np.arange(10) % 5
FOLDER = "ssal.data.ImageFolderDataModule"


def write_checkpoint(tmp_path, name, in_channels=1, size=28, branches=True, data=None, crop=None):
    """An untrained small-cnn checkpoint in the format ssal writes (no training needed)."""
    groupings = None
    if branches:
        gs = [Grouping(G2, name="split-a"), Grouping(G5, name="split-b")]
        groupings = str(save_groupings(tmp_path / f"{name}-groupings.json", gs, NAMES))
    network = {"name": "small-cnn"}
    module = SSALModule(network, 10, in_channels, groupings={"source": groupings})
    module.class_names = NAMES
    module.preprocessing = Preprocessing.for_eval([0.4] * in_channels, [0.3] * in_channels, crop)
    module.data_config = data or {
        "class_path": "ssal.data.InMemoryDataModule",
        "init_args": {"dataset": "fashion-mnist"},
    }
    card = dataclasses.replace(module.card(), input_size=(in_channels, size, size))
    path = tmp_path / f"{name}.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "ssal": card.to_dict(), "epoch": 0, "global_step": 0},
        path,
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name, shape, mode in (
        ("rgb.png", (50, 70, 3), "RGB"),
        ("grey.jpg", (100, 40), "L"),
        ("rgba.png", (33, 33, 4), "RGBA"),
        ("colour.jpeg", (20, 90, 3), "RGB"),
    ):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / name)
        paths.append(d / name)
    palette = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).convert("P")
    palette.save(d / "palette.png", transparency=0)
    paths.append(d / "palette.png")
    return paths


def check_record(r, groupings, top_k=1):
    assert set(r) >= {"fine", "branches", "consistent", "joint"}
    f, j = r["fine"], r["joint"]
    assert f["name"] == NAMES[f["class"]] and 0 < f["prob"] <= 1
    assert j["name"] == NAMES[j["class"]] and 0 < j["prob"] <= 1
    for head in (f, j):
        assert len(head["top"]) == top_k and head["top"][0]["class"] == head["class"]
        probs = [t["prob"] for t in head["top"]]
        assert probs == sorted(probs, reverse=True)
    assert len(r["branches"]) == len(groupings)
    for i, (b, g) in enumerate(zip(r["branches"], groupings, strict=True)):
        assert b["branch"] == i + 1 and 0 < b["prob"] <= 1
        assert b["members"] == [NAMES[c] for c in np.flatnonzero(g == b["group"])]
        assert b["agrees"] == (b["group"] == g[f["class"]])
    assert r["consistent"] == all(b["agrees"] for b in r["branches"])


def test_predict_cli_json_on_png_and_jpeg(tmp_path, images, capsys):
    ckpt = write_checkpoint(tmp_path, "grey")
    out = tmp_path / "pred.json"
    args = ["predict", "--checkpoint", str(ckpt), *map(str, images), "--json"]
    assert main([*args, "--top-k", "3", "--alpha", "0.5", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["alpha"] == 0.5 and doc["groupings"] == ["split-a", "split-b"]
    assert [r["file"] for r in doc["predictions"]] == [str(p) for p in images]
    for r in doc["predictions"]:
        check_record(r, [G2, G5], top_k=3)
        assert r["joint"]["alpha"] == 0.5


def test_predict_cli_table(tmp_path, images, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    ckpt = write_checkpoint(tmp_path, "rgb", in_channels=3, size=32)
    assert main(["predict", "--checkpoint", str(ckpt), str(images[0]), str(images[1])]) == 0
    printed = capsys.readouterr().out
    assert "rgb.png" in printed and "grey.jpg" in printed and "joint" in printed


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_is_one_warning_line_or_with_strict_one_error(
    tmp_path, images, capsys, content
):
    ckpt = write_checkpoint(tmp_path, "grey")
    bad = tmp_path / "bad.jpg"
    if content == "truncated":
        data = images[3].read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    args = ["predict", "--checkpoint", str(ckpt), str(images[0]), str(bad), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[0].startswith(f"ssal: warning: skipped {bad}: cannot read image (")
    assert err[1:] == ["ssal: skipped 1 unreadable files"]
    assert [r["file"] for r in json.loads(captured.out)["predictions"]] == [str(images[0])]
    assert main([*args, "--strict"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssal: error: {bad}: cannot read image (")
    assert captured.out == ""
    missing = tmp_path / "missing.png"
    assert main(["predict", "--checkpoint", str(ckpt), str(missing)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        "image not found" in err[0] and err[-1] == "ssal: error: none of the 1 images could be read"
    )


def test_images_are_converted_as_in_training(images):
    from torchvision.transforms import v2

    from ssal.data import ImageFolderDataModule
    from ssal.data.transforms import folder_transforms

    # image folders: the datamodule's own evaluation transform (resize S/0.875, centre crop),
    # applied from the preprocessing the datamodule records for checkpoints
    dm = ImageFolderDataModule("unused", image_size=32, num_workers=0)
    evaluation = folder_transforms(32, train=False)
    prep = dm.preprocessing()
    assert prep.resize == 36 and prep.crop == (32, 32)
    for path in images:
        got = load_image(path, 3, (32, 32), prep)
        with Image.open(path) as img:
            expected = evaluation(img.convert("RGBA").convert("RGB"))
        assert got.dtype == torch.uint8 and got.shape == (3, 32, 32)
        assert torch.equal(got, expected)
    # small datasets: a plain resize to the training size, grey for one channel
    got = load_image(images[0], 1, (28, 28))
    with Image.open(images[0]) as img:
        expected = v2.functional.pil_to_tensor(img.convert("L").resize((28, 28), Image.BILINEAR))
    assert got.shape == (1, 28, 28)
    assert (got.int() - expected.int()).abs().max() <= 1


def test_predict_tensors_normalises_uint8_and_matches_structured_predict(tmp_path):
    model, card = load_checkpoint(write_checkpoint(tmp_path, "grey"))
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    records = predict_tensors(model, card, x, alpha=0.3)
    normalised = (x.float() / 255 - 0.4) / 0.3
    assert records == predict_tensors(model, card, normalised, alpha=0.3)
    with torch.no_grad():
        out = model(normalised)
    s = structured_predict(out.logits, out.branch_logits, card.groupings, 0.3)
    assert [r["fine"]["class"] for r in records] == s.fine_class.tolist()
    assert [r["joint"]["class"] for r in records] == s.joint_class.tolist()
    assert [r["consistent"] for r in records] == s.consistent.tolist()
    for r in records:
        check_record(r, [G2, G5])


def test_baseline_and_image_folder_checkpoints(tmp_path, images):
    data = {"class_path": FOLDER, "init_args": {"data_dir": "x", "image_size": 32}}
    model, card = load_checkpoint(
        write_checkpoint(
            tmp_path, "base", in_channels=3, size=32, branches=False, data=data, crop=32
        )
    )
    from ssal.inference import predict_images

    records = predict_images(model, card, images, top_k=2, batch_size=2)
    assert len(records) == len(images)
    for r in records:
        assert r["branches"] == [] and r["consistent"] is True
        assert r["joint"]["class"] == r["fine"]["class"]
        assert r["joint"]["prob"] == pytest.approx(r["fine"]["prob"], rel=1e-5)


def test_cards_of_older_schemas_are_refused_in_one_line(tmp_path):
    """Nothing older than the typed card was released: a checkpoint of schema 3 (or one with
    no schema) is refused, naming the file and the schema, and one of a newer ssal too."""
    path = write_checkpoint(tmp_path, "old", in_channels=1, size=28, branches=True)
    ckpt = torch.load(path, weights_only=True)
    for schema, said in ((3, "schema 3 is older"), (None, "schema 1 is older"), (9, "newer")):
        if schema is None:
            del ckpt["ssal"]["schema"]
        else:
            ckpt["ssal"]["schema"] = schema
        torch.save(ckpt, path)
        with pytest.raises(ValueError, match=said) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_card_round_trips_through_checkpoint_and_export(tmp_path):
    """What load_checkpoint returns is the card that was saved, with the file, epoch and step
    added; an export carries the same card (the checkpoint it came from included)."""
    from ssal.card import ModelCard
    from ssal.checkpoint import export_checkpoint, read_card

    path = write_checkpoint(tmp_path, "rt", in_channels=3, size=32, crop=32)
    saved = ModelCard.from_dict(torch.load(path, weights_only=True)["ssal"], path)
    model, card = load_checkpoint(path)
    assert card == dataclasses.replace(saved, checkpoint=str(path), epoch=0, global_step=0)
    assert card.preprocessing == Preprocessing((0.4,) * 3, (0.3,) * 3, 36, (32, 32))
    assert [g.name for g in card.groupings] == ["split-a", "split-b"]
    assert model.input_size == card.input_size == (3, 32, 32)
    out = export_checkpoint(path, tmp_path / "export")
    assert read_card(out) == card and load_checkpoint(out)[1] == card


def test_describe_predictions_by_hand():
    fine = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])  # says group 1 = {classes 2, 3}; class 0 is in group 0
    [r] = describe_predictions(fine, [b], [np.array([0, 0, 1, 1])], ["a", "b", "c", "d"], 0.0, 2)
    assert r["fine"]["name"] == "a" and [t["name"] for t in r["fine"]["top"]][0] == "a"
    assert r["branches"][0]["members"] == ["c", "d"] and r["branches"][0]["agrees"] is False
    assert r["consistent"] is False and r["joint"]["class"] == 0
    with pytest.raises(ValueError, match="top_k"):
        describe_predictions(fine, [b], [np.array([0, 0, 1, 1])], None, 0.3, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    a = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    got = load_image(tmp_path / "deep.png", 1, (32, 32)).float()
    assert got.mean().item() == pytest.approx(a.mean() / 257, abs=1.0)


def test_predict_a_folder_into_jsonl_and_csv_skipping_an_unreadable_file(tmp_path, images, capsys):
    """A folder (searched recursively, image files only) of PNGs and JPEGs with one corrupt
    file: one record per readable image, one warning line, exit 0; ``--strict``: exit 2 and no
    output file."""
    import csv
    import shutil

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, path in enumerate(images):
        shutil.copy(path, (folder / "nested" if i % 2 else folder) / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not even tried")
    ckpt = write_checkpoint(tmp_path, "grey")
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len([e for e in err if e.startswith("ssal: warning: skipped ")]) == 1
    assert "broken.jpg: cannot read image" in err[0]
    assert err[-1] == f"ssal: wrote {len(images)} predictions to {out}; skipped 1"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["file"]).name for r in records) == sorted(p.name for p in images)
    for r in records:
        check_record(r, [G2, G5])

    table = tmp_path / "preds.csv"
    assert (
        main(["predict", "--checkpoint", str(ckpt), f"{folder}/**/*.png", "--out", str(table)]) == 0
    )
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    pngs = [p for p in images if p.suffix == ".png"]
    assert len(rows) == len(pngs) and set(rows[0]) >= {"file", "fine_name", "branch2_agrees"}
    by_file = {r["file"]: r for r in records}
    for row in rows:
        assert row["fine_name"] == by_file[row["file"]]["fine"]["name"]

    capsys.readouterr()
    strict = tmp_path / "strict.jsonl"
    args = ["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(strict), "--strict"]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "broken.jpg: cannot read image" in err[0] and "--strict" in err[0]
    assert not strict.exists() and not list(tmp_path.glob(".strict.jsonl*"))


def test_predict_names_a_pattern_that_matches_nothing(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path, "grey")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "*.png")]) == 2
    assert capsys.readouterr().err.strip() == f"ssal: error: no file matches {tmp_path / '*.png'}"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_predict_that_reads_no_image_writes_no_file(tmp_path, capsys, suffix):
    ckpt = write_checkpoint(tmp_path, "m")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / f"preds{suffix}"
    args = ["predict", "--checkpoint", str(ckpt), str(bad), "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ssal: error: none of the 1 images could be read"
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    out.write_text("earlier predictions\n")  # a failed run keeps what was there
    assert main(args) == 2
    assert out.read_text() == "earlier predictions\n"
