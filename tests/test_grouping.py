import json
import math

import numpy as np
import pytest

from ssal.grouping import (
    CIFAR100_CLASSES,
    Grouping,
    capacity_bound,
    cifar100_superclasses,
    group_classes,
    groupings_from_spec,
    load_groupings,
    read_label_file,
    save_groupings,
)
from tests.conftest import write_label_file


def planted(blocks: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix with heavy confusion inside blocks, light noise across them."""
    rng = np.random.default_rng(seed)
    c = blocks * size
    block = np.repeat(np.arange(blocks), size)
    perm = rng.permutation(c)  # hide the blocks behind a random class order
    block = block[perm]
    m = rng.uniform(0, 1, (c, c))
    m[block[:, None] == block[None, :]] += (
        20 + rng.uniform(0, 5, (c, c))[block[:, None] == block[None, :]]
    )
    np.fill_diagonal(m, 500)
    return m, block


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all(len(set(b[a == g])) == 1 for g in np.unique(a)) and len(np.unique(a)) == len(
        np.unique(b)
    )


def test_hand_example_similar_and_split():
    # classes 0-1 confuse each other, 2-3 confuse each other
    m = np.array([[90, 9, 0, 1], [8, 90, 1, 1], [0, 1, 90, 9], [1, 0, 10, 89]], float)
    assert same_partition(group_classes(m, 2, "similar"), np.array([0, 0, 1, 1]))
    split = group_classes(m, 2, "split")
    assert split[0] != split[1] and split[2] != split[3]
    # seed: the class with the smallest row sum of D = max(S) - S is the most confused one
    s = (m - np.diag(np.diag(m)) + (m - np.diag(np.diag(m))).T) / 2
    most_confused = int(np.argmax(s.sum(1)))
    assert group_classes(m, 2, "similar")[most_confused] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similar_recovers_planted_blocks(seed):
    m, block = planted(5, 6, seed)
    assert same_partition(group_classes(m, 5, "similar", seed=seed), block)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_spreads_every_block(seed):
    m, block = planted(4, 5, seed)
    g = group_classes(m, 5, "split", seed=seed)
    for b in range(4):
        members = g[block == b]
        assert len(set(members)) == len(members), f"block {b} has two classes in one group"


@pytest.mark.parametrize(
    "c,groups,margin",
    [(100, 20, 1.1), (100, 33, 1.1), (100, 50, 1.1), (37, 5, 1.0), (60, 7, 1.3), (1000, 334, 1.1)],
)
def test_group_sizes_bounded_and_nonempty(c, groups, margin):
    rng = np.random.default_rng(c + groups)
    m = rng.gamma(0.3, 1.0, (c, c))
    for mode in ("similar", "split"):
        g = group_classes(m, groups, mode, size_margin=margin, seed=3)
        sizes = np.bincount(g, minlength=groups)
        assert len(g) == c and sizes.min() >= 1
        assert sizes.max() <= math.ceil(margin * c / groups) == capacity_bound(c, groups, margin)


def test_deterministic_and_ties_use_seed():
    m = np.random.default_rng(0).uniform(size=(30, 30))
    assert np.array_equal(group_classes(m, 6, seed=4), group_classes(m, 6, seed=4))
    flat = np.ones((12, 12))  # everything ties: the seed decides
    results = {tuple(group_classes(flat, 3, size_margin=1.0, seed=s)) for s in range(6)}
    assert len(results) > 1
    for r in results:
        assert np.bincount(r).tolist() == [4, 4, 4]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(confusion=np.ones((3, 4)), num_groups=2), "square"),
        (dict(confusion=np.ones((3, 3)), num_groups=4), "between 1 and the 3"),
        (dict(confusion=-np.ones((3, 3)), num_groups=2), "negative"),
        (dict(confusion=np.full((3, 3), np.nan), num_groups=2), "NaN"),
        (dict(confusion=np.ones((3, 3)), num_groups=2, mode="other"), "mode"),
        (dict(confusion=np.ones((3, 3)), num_groups=2, size_margin=0.5), "size_margin"),
    ],
)
def test_group_classes_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_classes(**kwargs)


def test_file_round_trip(tmp_path):
    gs = [
        Grouping(np.array([0, 1, 0, 1]), name="a", mode="similar"),
        Grouping(np.array([0, 1, 2, 2]), name="b", mode="split"),
    ]
    path = save_groupings(tmp_path / "g.json", gs, ["w", "x", "y", "z"])
    loaded, names = load_groupings(path, num_classes=4)
    assert names == ["w", "x", "y", "z"]
    assert [g.name for g in loaded] == ["a", "b"] and [g.mode for g in loaded] == [
        "similar",
        "split",
    ]
    assert [g.num_groups for g in loaded] == [2, 3]
    assert np.array_equal(loaded[1].assignment, [0, 1, 2, 2])
    assert loaded[1].members(2) == [2, 3]


def _write(tmp_path, doc) -> str:
    p = tmp_path / "g.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


@pytest.mark.parametrize(
    "doc,match",
    [
        (
            {"num_classes": 4, "groupings": [{"assignment": [0, 1, 0]}]},
            "has 3 classes but the model has 4",
        ),
        ({"num_classes": 3, "groupings": [{"assignment": [0, 1, 5], "num_groups": 3}]}, r"0\.\.2"),
        (
            {"num_classes": 3, "groupings": [{"assignment": [0, 2, 0], "num_groups": 3}]},
            r"groups \[1\] are empty",
        ),
        ({"num_classes": 3, "groupings": []}, "no groupings"),
        ({"groupings": [{"name": "x"}]}, "no 'assignment'"),
        ("{not json", "not a JSON"),
        ({"num_classes": 3, "class_names": ["a"], "groupings": []}, "1 class names for 3"),
    ],
)
def test_load_errors(tmp_path, doc, match):
    with pytest.raises(ValueError, match=match):
        load_groupings(_write(tmp_path, doc))


def test_load_checks_model_classes(tmp_path):
    p = save_groupings(tmp_path / "g.json", [np.array([0, 1, 1])])
    with pytest.raises(ValueError, match="written for 3 classes but the model has 10"):
        load_groupings(p, num_classes=10)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_groupings(tmp_path / "missing.json")


def test_authors_text_format(tmp_path):
    """One group index per line, written by numpy.savetxt as floats (the authors' files)."""
    path = tmp_path / "cifar100_20_group_similar_v2.txt"
    np.savetxt(path, np.arange(12) % 4)
    assert path.read_text().startswith("0.000000000000000000e+00\n1.000000000000000000e+00")
    [g], names = load_groupings(path, num_classes=12)
    assert names is None and g.name == "cifar100_20_group_similar_v2" and g.num_groups == 4
    assert g.assignment.tolist() == [0, 1, 2, 3] * 3
    path.write_text("0\n1\n\n2\n")  # blank lines and whole numbers are fine
    assert load_groupings(path)[0][0].assignment.tolist() == [0, 1, 2]
    for text, match in [
        ("0\n1.5\n", r"line 2: '1.5' is not a group index"),
        ("0\n1e300\n", r"line 2: '1e300' is not a group index"),
        ("0\nnan\n", r"line 2: 'nan' is not a group index"),
        ("0\n1 2\n", "line 2: '1 2' holds more than one value"),
        ("0\n2\n2\n", r"groups \[1\] are empty"),
        ("", "holds no group indices"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=match) as e:
            load_groupings(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    np.savetxt(path, np.arange(12) % 4)
    with pytest.raises(ValueError, match="12 group indices .* but the data has 10 classes"):
        load_groupings(path, num_classes=10)


def test_cifar100_superclasses():
    g = cifar100_superclasses()
    assert g.num_classes == 100 and g.num_groups == 20
    assert np.bincount(g.assignment).tolist() == [5] * 20
    # the official coarse labels of the first fine classes (apple, aquarium_fish, baby, ...)
    assert g.assignment[:10].tolist() == [4, 1, 14, 8, 0, 6, 7, 7, 18, 3]
    assert CIFAR100_CLASSES[99] == "worm" and g.assignment[CIFAR100_CLASSES.index("tank")] == 19


def test_authors_label_file(tmp_path):
    a = np.arange(12) % 5
    path = write_label_file(tmp_path / "cifar100_5_group_similar_v2.txt", a)
    assert path.read_text().splitlines()[1] == "1.000000000000000000e+00"
    g = read_label_file(path, num_classes=12)
    assert g.assignment.tolist() == a.tolist() and g.num_groups == 5
    assert (g.name, g.mode) == ("cifar100_5_group_similar_v2", "similar")
    split = read_label_file(write_label_file(tmp_path / "x_3_split_similar.txt", a % 3))
    assert split.mode == "split"
    # a config's groupings: one file, or a list (one grouping per branch), JSON or text
    json_file = save_groupings(tmp_path / "g.json", [Grouping(a % 2)])
    found = groupings_from_spec([str(json_file), str(path)], 12)
    assert [x.num_groups for x in found] == [2, 5]
    assert groupings_from_spec(str(path), 12)[0].assignment.tolist() == a.tolist()


@pytest.mark.parametrize(
    "text,classes,match",
    [
        ("0\n1.5\n", None, r"line 2: '1.5' is not a group index"),
        ("0\n-1\n", None, r"line 2: '-1' is not a group index"),
        ("0\nfish\n", None, r"line 2: 'fish' is not a number"),
        ("0 1\n", None, "holds more than one value"),
        ("0\nnan\n", None, "is not a group index"),
        ("\n\n", None, "holds no group indices"),
        ("0\n1\n2\n", 4, "3 group indices \\(one per class\\) but the data has 4 classes"),
        ("0\n2\n2\n", None, r"groups \[1\] are empty"),
    ],
)
def test_authors_label_file_errors(tmp_path, text, classes, match):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_label_file(path, classes)
    with pytest.raises(FileNotFoundError, match="groupings file not found"):
        read_label_file(tmp_path / "missing.txt")


def test_groupings_for_other_or_reordered_class_names_are_refused(tmp_path):
    from ssal.grouping import check_class_names

    names = [f"class{c}" for c in range(10)]
    gs = [Grouping(np.arange(10) % 2, name="two"), Grouping(np.arange(10) % 5, name="five")]
    path = save_groupings(tmp_path / "g.json", gs, names[::-1])
    loaded, _ = load_groupings(path, num_classes=10)
    with pytest.raises(ValueError) as e:
        check_class_names(loaded, names)
    assert str(e.value).startswith(f"{path}: class 0 is 'class9' there but 'class0' in the data;")
    check_class_names(loaded, names[::-1])  # the order they were made for
    check_class_names(loaded, None)  # data without names: only the count is checked
    labels = write_label_file(tmp_path / "labels.txt", np.arange(10) % 2)
    check_class_names(load_groupings(labels, 10)[0], names)  # text files name no classes
    assert [g.to_dict() for g in loaded] == [g.to_dict() for g in gs]  # names stay out


def test_fit_refuses_groupings_made_for_other_classes(tmp_path, capsys):
    from ssal.cli import main
    from tests.conftest import write_tiny_config
    from tests.test_data import CIFAR100_FINE, write_cifar100

    write_cifar100(tmp_path / "data", n_train=40, n_test=10)
    names = [n.decode() for n in CIFAR100_FINE]
    g = Grouping(np.arange(100) % 20, name="given-20")
    path = save_groupings(tmp_path / "g.json", [g], names[::-1])
    config = write_tiny_config(
        tmp_path / "c.yaml", tmp_path / "data", model={"groupings": {"source": str(path)}}
    )
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class 0 is 'fine_99' there but 'fine_00' in the data" in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))
