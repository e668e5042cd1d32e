import dataclasses
import json

import numpy as np
import pytest
import torch

from ssal.card import MAX_INPUT_SIDE, ModelCard, Preprocessing
from ssal.evaluate import evaluate_runs
from ssal.grouping import Grouping


def card(**changes) -> ModelCard:
    fields = dict(
        model="small-cnn",
        num_classes=10,
        input_size=[1, 28, 28],
        preprocessing=Preprocessing.for_eval([0.3], [0.4]),
        groupings=[Grouping(np.arange(10) % 2, name="a"), Grouping(np.arange(10) % 5)],
        branch_weights=[1, 1],
        alpha=0.3,
        class_names=[f"c{i}" for i in range(10)],
        data={"class_path": "ssal.data.InMemoryDataModule", "init_args": {"shift": [1, 2]}},
    )
    return ModelCard(**{**fields, **changes})


def test_card_is_frozen_and_round_trips_through_json():
    c = card()
    assert c.input_size == (1, 28, 28) and c.branch_weights == (1.0, 1.0)
    assert isinstance(c.groupings, tuple) and isinstance(c.class_names, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.alpha = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.data["class_path"] = "x"  # type: ignore[index]
    copy = c.data_config()
    copy["init_args"]["shift"].append(3)  # a copy of its own: the card is unchanged
    assert c.data["init_args"]["shift"] == [1, 2]
    d = json.loads(json.dumps(c.to_dict()))
    assert ModelCard.from_dict(d, "x.json") == c
    assert ModelCard.from_dict(d, "x.json") != dataclasses.replace(c, alpha=0.5)
    net = c.build()
    assert net.input_size == (1, 28, 28) and [g.name for g in net.groupings] == ["a", "given-5"]


def test_preprocessing_rule_and_resize():
    assert Preprocessing.for_eval([0.5], [0.2]) == Preprocessing((0.5,), (0.2,), None, None)
    folder = Preprocessing.for_eval([0.5] * 3, [0.2] * 3, 224)
    assert folder.resize == 256 and folder.crop == (224, 224)
    img = torch.zeros(3, 300, 400, dtype=torch.uint8)
    assert folder.resize_image(img, (224, 224)).shape == (3, 224, 224)
    assert Preprocessing.plain(1).resize_image(img[:1], (28, 30)).shape == (1, 28, 30)


@pytest.mark.parametrize(
    "changes, said",
    [
        ({"schema": 3}, "schema 3 is older"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_size": [5, 28, 28]}, "C of 1..4"),
        ({"input_size": [1, MAX_INPUT_SIDE + 1, 28]}, "sides of 1.."),
        ({"class_names": ["a"]}, "class_names must list the 10"),
        ({"groupings": [{"assignment": [0, 1] * 6}]}, "covers 12 classes"),
        ({"groupings": [{"assignment": [0, 2] * 5}]}, "empty"),
        ({"preprocessing": {"mean": [0.1], "std": [0.0]}}, "std must be positive"),
        ({"preprocessing": {"mean": [0.1], "std": [1], "crop": [1]}}, "crop must be"),
        ({"alpha": True}, "alpha must be a number"),
        ({"data": {"x": float("nan")}}, "data must be plain data"),
        ({"epoch": "3"}, "epoch must be a count"),
    ],
)
def test_from_dict_names_the_source_and_the_problem(changes, said):
    d = {**card().to_dict(), **changes}
    with pytest.raises(ValueError) as e:
        ModelCard.from_dict(d, "some/ssal.json")
    message = str(e.value)
    assert message.startswith("some/ssal.json: the model card is unusable (") and said in message
    assert "\n" not in message


def test_evaluate_runs_takes_each_cards_data_from_the_caller(tmp_path):
    """The run-folder workflow evaluates on the data ``data_for(card)`` gives (no engine)."""
    c = card()
    net = c.build().eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    (tmp_path / "run").mkdir()
    torch.save({"ssal": c.to_dict(), "state_dict": state}, tmp_path / "run" / "model.ckpt")

    class Data:
        num_classes = 10

        def _loader(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=g)
            return [(x[:10], torch.arange(10)), (x[10:], torch.arange(10))]

        heldout_dataloader = test_dataloader = _loader

        def prepare_batch(self, images, train=False):
            return images.float() / 255

    seen = []
    [r] = evaluate_runs([tmp_path / "run"], lambda k: seen.append(k) or Data(), alpha=0.5)
    assert seen == [r.card] and r.card.checkpoint == str(tmp_path / "run" / "model.ckpt")
    assert r.alpha == 0.5 and r.alpha_source == "given" and r.test["num_samples"] == 20
    assert r.outputs["labels"].tolist() == list(range(10)) * 2
    assert r.class_names == list(c.class_names) and r.groupings == list(c.groupings)
