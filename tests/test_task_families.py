"""The three task clusters' data (parameter-allocation spec §7.3): the family builder on small files
written here, the digits' per-task views, the CIFAR-100 pickle reader, and the separation score."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from test_images import make_idx, make_omniglot

from sharewise.config import validate_config
from sharewise.data.sources import build_data
from sharewise.errors import ConfigError, DataError
from sharewise.methods.gumbel_matrix.similarity import family_separation


def _families(tmp_path, **data):
    return build_data(validate_config({"data": {"source": "task_families", **data}}))


def _label_of(data, task, split):
    ex = data.examples[task]
    rows = data.splits[task][split]
    return {str(ex.ids[i]): int(ex.targets[task][i]) for i in rows}


def test_offline_families_leave_one_out_labels_and_shared_splits(tmp_path):
    omniglot = make_omniglot(tmp_path / "omniglot", as_zip=True, size=12)
    mnist = make_idx(tmp_path / "mnist", n_train=200, n_test=50, size=8)
    loaded = _families(tmp_path, omniglot=str(omniglot), alphabets="all", mnist=str(mnist))
    data = loaded.data
    names = data.task_names
    assert names[:3] == ["Alpha", "Beta_(x)", "Gamma"]
    assert names[3:13] == [f"mnist_loo{k}" for k in range(10)] and names[13:] == [f"digits_loo{k}" for k in range(10)]
    families = data.meta["families"]
    assert [families[n] for n in names] == ["omniglot"] * 3 + ["mnist"] * 10 + ["digits"] * 10
    assert data.input_spec.shape == (3, 32, 32)
    # every task's images are 3 x 32 x 32 in [0, 1], the grey copied to the three channels
    for task in ("Alpha", "mnist_loo0", "digits_loo9"):
        x = data.examples[task].inputs[np.arange(4)]
        assert x.shape == (4, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # leave-one-out: digit k absent, labels above k shifted down by one, the rest unchanged
    raw = {}
    for split in ("train", "val", "test"):
        raw.update(_label_of(data, "mnist_loo9", split))  # drop 9: every other digit keeps its label
    assert set(raw.values()) == set(range(9))
    for k in (0, 3, 9):
        task = f"mnist_loo{k}"
        assert data.tasks[names.index(task)].classes == [c for c in range(10) if c != k]
        for split in ("train", "val", "test"):
            labels = _label_of(data, task, split)
            for image_id, y in labels.items():
                digit = raw.get(image_id, 9)  # an image absent from loo9 is a 9
                assert digit != k
                assert y == (digit - 1 if digit > k else digit)
        assert len(_label_of(data, task, "test")) == sum(1 for d in range(50) if d % 10 != k)
    # the same split for every task of a family: an image is in one split whichever task holds it
    for family, prefix in (("mnist", "mnist_loo"), ("digits", "digits_loo")):
        where = {}
        for k in range(10):
            for split in ("train", "val", "test"):
                for image_id in _label_of(data, f"{prefix}{k}", split):
                    assert where.setdefault(image_id, split) == split, (family, image_id)
    digits_sizes = {s: len(data.splits["digits_loo0"][s]) + len(data.splits["digits_loo1"][s]) for s in
                    ("train", "val", "test")}
    total = sum(digits_sizes.values())
    assert abs(digits_sizes["train"] / total - 0.6) < 0.02 and abs(digits_sizes["test"] / total - 0.2) < 0.02


def test_fashion_replaces_digits_and_bad_family_input_is_one_clear_error(tmp_path):
    mnist = make_idx(tmp_path / "mnist", n_train=100, n_test=20, size=8)
    fashion = make_idx(tmp_path / "fashion", n_train=100, n_test=20, size=28)
    data = _families(tmp_path, families=["mnist", "fashion"], mnist=str(mnist), fashion=str(fashion)).data
    assert data.task_names[10:] == [f"fashion_loo{k}" for k in range(10)]
    assert data.meta["tasks_per_family"] == {"mnist": 10, "fashion": 10}
    from sharewise.data.families import TaskFamiliesOptions, resolve_families

    assert resolve_families(TaskFamiliesOptions(fashion=str(fashion))) == ["omniglot", "mnist", "fashion"]
    assert resolve_families(TaskFamiliesOptions()) == ["omniglot", "mnist", "digits"]
    assert resolve_families(TaskFamiliesOptions(preset="paper")) == ["cifar100", "mnist", "fashion"]
    with pytest.raises(ConfigError, match=r"data.omniglot"):
        _families(tmp_path, mnist=str(mnist))  # offline needs the Omniglot files
    with pytest.raises(DataError, match=r"data.fashion: not found"):
        _families(tmp_path, families=["fashion"], fashion=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"data.families.*twice"):
        _families(tmp_path, families=["mnist", "mnist"], mnist=str(mnist))


def test_digits_task_views_are_per_task_images():
    loaded = build_data(validate_config({"data": {"source": "digits", "task_views": {"all": {}, "no3": {"drop_class": 3}},
                                                  "image_size": 16, "normalize": "none"}}))
    data = loaded.data
    assert data.shape == "per_task" and data.input_spec.shape == (1, 16, 16)
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    assert sum(len(data.splits["all"][s]) for s in ("train", "val", "test")) == n
    assert sum(len(data.splits["no3"][s]) for s in ("train", "val", "test")) == n - int((load_digits().target == 3).sum())
    assert data.tasks[1].classes == [0, 1, 2, 4, 5, 6, 7, 8, 9]


# ------------------------------------------------------------------------------- CIFAR-100


def _write_cifar(folder, n_per_fine=10, n_test=2, coarse_of=None):
    """A tiny cifar-100-python: 4 superclasses of 5 fine classes each (20 fine classes)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = coarse_of or {f: (f * 7) % 4 for f in range(20)}  # fine ids interleaved across superclasses

    def part(n):
        fine = np.repeat(np.arange(20), n)
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        data[:, 0] = fine  # the fine id in the first red pixel
        return {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": [coarse_of[f] for f in fine],
                b"filenames": [f"img{i}.png".encode() for i in range(len(fine))]}

    for name, n in (("train", n_per_fine), ("test", n_test)):
        with open(folder / name, "wb") as fh:
            pickle.dump(part(n), fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"fine{f}".encode() for f in range(20)],
                     b"coarse_label_names": [f"coarse{c}".encode() for c in range(4)]}, fh, protocol=2)
    return folder


def test_cifar100_superclass_tasks_from_small_pickles(tmp_path):
    folder = _write_cifar(tmp_path / "cifar-100-python")
    data = _families(tmp_path, preset="paper", families=["cifar100"], cifar100=str(folder)).data
    assert data.task_names == ["coarse0", "coarse1", "coarse2", "coarse3"]
    for k, task in enumerate(data.task_names):
        members = [f for f in range(20) if (f * 7) % 4 == k]  # ordered by fine-label id
        assert data.tasks[k].classes == [f"fine{f}" for f in members]
        ex = data.examples[task]
        # 80/20 of each fine class's 10 training images, its 2 test images
        assert [len(data.splits[task][s]) for s in ("train", "val", "test")] == [40, 10, 10]
        for split in ("train", "val", "test"):
            rows = data.splits[task][split]
            x = ex.inputs[rows]
            fine = np.round(x[:, 0, 0, 0].numpy() * 255).astype(int)  # decoded channel-major
            assert [members[y] for y in ex.targets[task][rows].tolist()] == fine.tolist()
            assert all(str(ex.ids[i]).startswith("test/" if split == "test" else "train/") for i in rows)
            per_class = np.bincount(ex.targets[task][rows].numpy(), minlength=5)
            assert per_class.tolist() == [{"train": 8, "val": 2, "test": 2}[split]] * 5


def test_cifar100_bad_files_are_one_clear_error(tmp_path):
    folder = _write_cifar(tmp_path / "c")
    (folder / "meta").unlink()
    with pytest.raises(DataError, match=r"CIFAR-100 file not found: .*meta"):
        _families(tmp_path, families=["cifar100"], cifar100=str(folder))

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    folder = _write_cifar(tmp_path / "d")
    with open(folder / "test", "wb") as fh:
        pickle.dump({b"data": Evil()}, fh, protocol=2)
    with pytest.raises(DataError, match=r"not a readable CIFAR-100 pickle .*refusing to load (__builtin__|builtins).print"):
        _families(tmp_path, families=["cifar100"], cifar100=str(folder))


# ------------------------------------------------------------------------------- separation score


def test_separation_score_per_family_breakdown():
    s = np.array([[1.0, 0.8, 0.2, 0.0],
                  [0.8, 1.0, 0.4, 0.2],
                  [0.2, 0.4, 1.0, 0.6],
                  [0.0, 0.2, 0.6, 1.0]])
    sep = family_separation(s, ["a", "a", "b", "b"])
    assert sep["within"] == pytest.approx(0.7) and sep["across"] == pytest.approx(0.2)
    assert sep["difference"] == pytest.approx(0.5)
    assert sep["by_family"]["a"] == {"tasks": 2, "within": pytest.approx(0.8), "across": pytest.approx(0.2),
                                     "difference": pytest.approx(0.6)}
    assert sep["by_family"]["b"]["within"] == pytest.approx(0.6)
