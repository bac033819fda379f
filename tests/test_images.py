"""Image sources (IDX, Omniglot, image folders, image-path tables), preprocessing, cache,
augmentation and the conv backbone, on small files each test writes."""

import gzip
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sharewise.backbones import apply_block, backbone_factory
from sharewise.config import validate_config
from sharewise.data import InputSpec, build_data
from sharewise.data.derive import add_derived_columns
from sharewise.data.image_ops import Augment, AugmentOptions
from sharewise.errors import ConfigError, DataError

# ----------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx(folder: Path, *, n_train: int = 200, n_test: int = 50, size: int = 8, gz: bool = False) -> Path:
    """A tiny MNIST-format set: image i of class c has a bright pixel at column c (recognisable)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
        images[np.arange(n), 0, labels % size] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


def cfg(**data):
    extra = {k: data.pop(k) for k in ("tasks", "split", "train") if k in data}
    return validate_config({"data": data, **extra})


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def make_omniglot(root: Path, *, as_zip: bool, drawings: int = 20, size: int = 12) -> Path:
    """Three alphabets in the official layout (two background, one evaluation), 1-bit PNGs."""
    alphabets = {"images_background": {"Alpha": 3, "Beta_(x)": 2}, "images_evaluation": {"Gamma": 2}}
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    char_id = 0
    for set_name, alphas in alphabets.items():
        files = {}
        for alpha, n_chars in alphas.items():
            for c in range(1, n_chars + 1):
                char_id += 1
                for d in range(1, drawings + 1):
                    img = rng.random((size, size)) > 0.2  # True = background, as in Omniglot
                    img[c, :] = False  # the character's stroke
                    name = f"{set_name}/{alpha}/character{c:02d}/{char_id:04d}_{d:02d}.png"
                    buf = root / "tmp.png"
                    Image.fromarray(img).save(buf)
                    files[name] = buf.read_bytes()
        if as_zip:
            with zipfile.ZipFile(root / f"{set_name}.zip", "w") as z:
                for name, data in sorted(files.items()):
                    z.writestr(name, data)
        else:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
    (root / "tmp.png").unlink()
    return root


# ----------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_shared_input_with_derived_tasks(tmp_path, gz):
    folder = make_idx(tmp_path / "mnist", gz=gz)
    derived = {"parity": "label % 2", "large": "label >= 5", "value": "label"}
    loaded = build_data(cfg(path=str(folder), derived_tasks=derived,
                            tasks=[{"name": "digit", "kind": "categorical", "column": "label"},
                                   {"name": "parity", "kind": "categorical"}, {"name": "large", "kind": "categorical"},
                                   {"name": "value", "kind": "numerical"}]))
    data = loaded.data
    assert data.shape == "shared" and data.task_names == ["digit", "parity", "large", "value"]
    assert data.input_spec == InputSpec("image", (1, 8, 8))
    # the t10k files are the test split; train/val 90/10 from the training files, disjoint
    assert len(data.splits["test"]) == 50 and len(data.splits["train"]) == 180 and len(data.splits["val"]) == 20
    ids = data.examples.ids
    assert all(str(ids[i]).startswith("test/") for i in data.splits["test"])
    assert not set(data.splits["train"]) & set(data.splits["val"])
    digit = data.examples.targets["digit"].numpy()
    assert data.tasks[0].classes == list(range(10))
    assert np.array_equal(data.examples.targets["parity"].numpy(), digit % 2)
    assert np.array_equal(data.examples.targets["large"].numpy(), (digit >= 5).astype(int))
    value = data.tasks[3]
    assert np.allclose(data.examples.targets["value"].numpy() * value.std + value.mean, digit, atol=1e-5)
    # the images: labels match the marker pixel; normalised with training statistics
    x = data.examples.get_inputs(data.splits["train"])
    assert x.shape == (180, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-2
    assert (x[:, 0, 0].argmax(1).numpy() == digit[data.splits["train"]] % 8).all()


def test_idx_default_task_and_explicit_files_and_ratios(tmp_path):
    folder = make_idx(tmp_path / "m")
    data = build_data(cfg(path=str(folder), normalize="none")).data
    assert data.task_names == ["label"]
    x = data.examples.get_inputs(np.array([0]))
    assert 0 <= float(x.min()) and float(x.max()) == 1.0
    files = {k: str(folder / n) for k, n in (("train_images", "train-images-idx3-ubyte"),
                                             ("train_labels", "train-labels-idx1-ubyte"))}
    with pytest.warns(UserWarning, match="no IDX test files"):
        data = build_data(cfg(source="idx", split={"ratios": [0.6, 0.2, 0.2]}, **files)).data  # 3-way split
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [120, 40, 40]


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_mismatched_files(tmp_path, gz):
    folder = make_idx(tmp_path / "m", gz=gz)
    suffix = ".gz" if gz else ""
    images = folder / f"train-images-idx3-ubyte{suffix}"
    raw = images.read_bytes()
    images.write_bytes(raw[:-7] if not gz else gzip.compress(gzip.decompress(raw)[:-7]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        build_data(cfg(path=str(folder)))
    if gz:  # a cut gzip stream
        images.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
            build_data(cfg(path=str(folder)))
    make_idx(folder, gz=gz)
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(199) % 10).astype(np.uint8), gz=gz)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*199 labels but .*train-images.* 200 images"):
        build_data(cfg(path=str(folder)))


def test_idx_bad_magic_and_swapped_files(tmp_path):
    folder = make_idx(tmp_path / "m")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(50))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: not an IDX file \(magic number 0x12345678"):
        build_data(cfg(path=str(folder)))
    make_idx(folder)
    (folder / "t10k-labels-idx1-ubyte").write_bytes((folder / "t10k-images-idx3-ubyte").read_bytes())
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: expected a 1-d IDX array of labels.*images file"):
        build_data(cfg(path=str(folder)))
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="test labels file is missing"):
        build_data(cfg(path=str(folder)))
    with pytest.raises(DataError, match="no IDX training files"):
        build_data(cfg(source="idx", path=str(tmp_path)))


def test_idx_per_task_views_rotation_and_leave_one_out(tmp_path):
    folder = make_idx(tmp_path / "m")
    views = {"upright": {}, "rot": {"rot90": 1}, "no3": {"drop_class": 3}}
    data = build_data(cfg(path=str(folder), task_views=views)).data
    assert data.shape == "per_task" and data.task_names == ["upright", "rot", "no3"]
    # one split for every task (an image is in the same split for all of them)
    for s in ("train", "val", "test"):
        assert np.array_equal(data.splits["upright"][s], data.splits["rot"][s])
    idx = data.splits["upright"]["train"][:5]
    up, rot = data.examples["upright"].get_inputs(idx), data.examples["rot"].get_inputs(idx)
    assert torch.equal(rot, torch.rot90(up, 1, dims=(-2, -1)))
    raw = up[0, 0].numpy()
    assert np.array_equal(rot[0, 0].numpy(), np.rot90(raw, k=1))  # the paper's np.rot90(img, k=1)
    no3 = data.tasks[2]
    assert no3.classes == [0, 1, 2, 4, 5, 6, 7, 8, 9] and no3.out_features == 9
    labels = data.examples["no3"].targets["no3"].numpy()
    digits = data.examples["upright"].targets["upright"].numpy()
    for s in ("train", "val", "test"):
        rows = data.splits["no3"][s]
        upright = data.splits["upright"][s]
        assert (digits[rows] != 3).all() and set(rows) == set(upright[digits[upright] != 3])
        assert np.array_equal(np.array(no3.classes)[labels[rows]], digits[rows])
    batch = next(data.batches("train", 4, shuffle=True))
    assert set(batch) == {"upright", "rot", "no3"} and batch["rot"][0].shape == (4, 1, 8, 8)


# ----------------------------------------------------------------- Omniglot


def _omniglot_pairs(data):
    """(task, id) per split."""
    return {s: {(t, data.examples[t].ids[i]) for t in data.task_names for i in data.splits[t][s]}
            for s in ("train", "val", "test")}


@pytest.mark.parametrize("as_zip", [True, False])
def test_omniglot_tasks_classes_and_disjoint_per_character_splits(tmp_path, as_zip):
    root = make_omniglot(tmp_path / "omni", as_zip=as_zip)
    loaded = build_data(cfg(path=str(root), normalize="none"))
    data = loaded.data
    assert data.shape == "per_task" and data.task_names == ["Alpha", "Beta_(x)", "Gamma"]
    assert [t.classes for t in data.tasks] == [["character01", "character02", "character03"],
                                               ["character01", "character02"], ["character01", "character02"]]
    assert data.input_spec == InputSpec("image", (1, 12, 12))
    pairs = _omniglot_pairs(data)
    assert not (pairs["train"] & pairs["val"] or pairs["train"] & pairs["test"] or pairs["val"] & pairs["test"])
    assert sum(len(p) for p in pairs.values()) == 7 * 20  # every drawing in exactly one split
    for t in data.task_names:
        labels = data.examples[t].targets[t].numpy()
        for ci in range(len(data.tasks[data.task_names.index(t)].classes)):
            counts = [int((labels[data.splits[t][s]] == ci).sum()) for s in ("train", "val", "test")]
            assert counts == [10, 4, 6]  # default 50/20/30 of each character's 20 drawings
    # inverted: strokes are 1, background 0; the stroke row is the character number
    ex = data.examples["Alpha"]
    x = ex.get_inputs(np.arange(len(ex)))
    labels = ex.targets["Alpha"].numpy()
    assert set(np.unique(x.numpy()).tolist()) <= {0.0, 1.0}
    assert (x[np.arange(len(ex)), 0, labels + 1].amin(dim=-1) == 1.0).all()


def test_omniglot_zip_and_folder_agree_and_seed_changes_split(tmp_path):
    a = build_data(cfg(path=str(make_omniglot(tmp_path / "z", as_zip=True)))).data
    b = build_data(cfg(path=str(make_omniglot(tmp_path / "f", as_zip=False)))).data
    assert _omniglot_pairs(a) == _omniglot_pairs(b)
    assert torch.equal(a.examples["Gamma"].get_inputs(np.arange(40)), b.examples["Gamma"].get_inputs(np.arange(40)))
    c = build_data(cfg(path=str(tmp_path / "z"), train={"seed": 5})).data
    assert _omniglot_pairs(c) != _omniglot_pairs(a)


def test_omniglot_alphabet_order_ratios_and_errors(tmp_path):
    root = make_omniglot(tmp_path / "o", as_zip=True)
    data = build_data(cfg(path=str(root), alphabets=["Gamma", "Alpha"], split={"ratios": [0.8, 0.1, 0.1]})).data
    assert data.task_names == ["Gamma", "Alpha"]
    assert [len(data.splits["Gamma"][s]) for s in ("train", "val", "test")] == [32, 4, 4]  # 16/2/2 per character
    with pytest.raises(ConfigError, match=r"alphabet 'Alfa' not found.*did you mean: Alpha"):
        build_data(cfg(path=str(root), alphabets=["Alfa"]))
    with pytest.raises(ConfigError, match="unknown preset"):
        build_data(cfg(path=str(root), alphabets="first21"))
    with pytest.raises(ConfigError, match="'Gujarati' and 19 more not found"):
        build_data(cfg(path=str(root), alphabets="parameter_allocation"))
    bad = make_omniglot(tmp_path / "bad", as_zip=False, drawings=19)
    with pytest.raises(DataError, match=r"Alpha/character01 has 19 drawings, expected 20"):
        build_data(cfg(path=str(bad)))
    assert build_data(cfg(path=str(bad), drawings_per_character=None)).data.task_names[0] == "Alpha"


def test_omniglot_presets():
    from sharewise.data.omniglot import BACKGROUND, EVALUATION, PRESETS

    assert len(set(BACKGROUND)) == 30 and len(set(EVALUATION)) == 20
    assert len(PRESETS["taan"]) == 50 and set(PRESETS["taan"]) == set(BACKGROUND) | set(EVALUATION)
    first20 = PRESETS["parameter_allocation"]
    assert len(first20) == 20 and set(first20) <= set(BACKGROUND) | set(EVALUATION)
    assert first20[:3] == ("Gujarati", "Sylheti", "Arcadian") and first20[-1] == "Atemayar_Qelisayer"


def test_omniglot_real_20_alphabets(shared_data):
    data = build_data(cfg(path=str(shared_data / "omniglot"), alphabets="parameter_allocation", image_size=28)).data
    assert sum(len(t.classes) for t in data.tasks) == 668  # parameter-allocation spec §7.2
    sizes = [sum(len(data.splits[t][s]) for t in data.task_names) for s in ("train", "val", "test")]
    assert sizes == [6680, 2672, 4008]
    pairs = _omniglot_pairs(data)
    assert not (pairs["train"] & pairs["test"]) and not (pairs["val"] & pairs["test"])
    assert data.input_spec.shape == (1, 28, 28)


# ----------------------------------------------------------------- image folders and tables


def make_folder(root: Path, n_per_class: int = 6) -> Path:
    """root/<class>/<image>: RGB PNGs and JPEGs whose saturated channel is the class."""
    rng = np.random.default_rng(2)
    for c, cls in enumerate(["cat", "dog", "eel"]):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 120, size=(10, 12, 3), dtype=np.uint8)
            arr[..., c] = 255
            Image.fromarray(arr).save(root / cls / f"img{i}{'.jpg' if i % 2 else '.png'}")
    (root / "README.txt").write_text("not an image")
    return root


def test_image_folder_classes_rgb_and_resize(tmp_path):
    root = make_folder(tmp_path / "pets")
    loaded = build_data(cfg(path=str(root), image_size=[8, 6], split={"ratios": [0.5, 0.25, 0.25]}))
    data = loaded.data
    assert loaded.state["source"] == "image_folder" and data.task_names == ["label"]
    assert data.tasks[0].classes == ["cat", "dog", "eel"]
    assert data.input_spec == InputSpec("image", (3, 8, 6))
    parts = [set(data.splits[s]) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 18 and all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    x = data.examples.get_inputs(np.arange(18))
    labels = data.examples.targets["label"].numpy()
    means = x.mean(dim=(2, 3)).argmax(1).numpy()  # the saturated channel is the class
    assert (means == labels).all()
    assert str(data.examples.ids[0]).startswith("cat/img")


def test_image_folder_split_layout(tmp_path):
    for split in ("train", "test", "val"):
        make_folder(tmp_path / "root" / split, n_per_class=3 if split != "train" else 6)
        (tmp_path / "root" / split / "README.txt").unlink()
    data = build_data(cfg(path=str(tmp_path / "root"))).data
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [18, 9, 9]
    assert all(str(data.examples.ids[i]).startswith("test/") for i in data.splits["test"])


def make_table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(30):
        arr = rng.integers(0, 100, size=(9, 9), dtype=np.uint8)
        big = i % 2
        arr[:, :] += 100 * big
        png(tmp_path / "imgs" / f"{i}.png", arr)
        rows.append({"file": f"imgs/{i}.png", "size": "big" if big else "small", "weight": float(i), "note": "x"})
    rows.append({"file": "imgs/missing.png", "size": "big", "weight": 1.0, "note": "x"})
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows.append({"file": "imgs/corrupt.png", "size": "small", "weight": 2.0, "note": "x"})
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_image_table_errors_and_skip_mode(tmp_path):
    path = make_table(tmp_path)
    tasks = [{"name": "size", "kind": "categorical"}, {"name": "weight", "kind": "numerical"}]
    with pytest.raises(DataError, match=r"image file not found: .*imgs/missing.png"):
        build_data(cfg(path=str(path), image_col="file", tasks=tasks))
    with pytest.warns(UserWarning, match=r"skipped 2 bad image\(s\)"):
        loaded = build_data(cfg(path=str(path), image_col="file", tasks=tasks, skip_bad_images=True))
    data = loaded.data
    assert loaded.state["source"] == "image_table" and data.meta["skipped_images"] == 2
    assert data.split_size("train") + data.split_size("val") + data.split_size("test") == 30
    assert data.input_spec == InputSpec("image", (1, 9, 9))  # grey PNGs -> 1 channel
    assert set(data.examples.ids) == {f"imgs/{i}.png" for i in range(30)}  # the image column names the examples
    # the path column is never a feature or a target; the targets come from their columns
    assert data.task_names == ["size", "weight"]
    x = data.examples.get_inputs(np.arange(30))
    size = np.array(data.tasks[0].classes)[data.examples.targets["size"].numpy()]
    assert (x.mean(dim=(1, 2, 3)).numpy() > 0)[size == "big"].all()
    (tmp_path / "imgs" / "missing.png").write_bytes((tmp_path / "imgs" / "0.png").read_bytes())
    with pytest.raises(DataError, match=r"imgs/corrupt.png: (not an image|corrupt)"):
        build_data(cfg(path=str(path), image_col="file", tasks=tasks))
    with pytest.raises(ConfigError, match="image column"):
        build_data(cfg(path=str(path), image_col="file", tasks=[{"name": "file", "kind": "categorical"}]))
    with pytest.raises(DataError, match=r"unknown image column 'fil'.*did you mean: file"):
        build_data(cfg(path=str(path), image_col="fil", tasks=tasks))


def test_truncated_image_found_by_decode_verification(tmp_path):
    path = make_table(tmp_path)
    frame = pd.read_csv(path).iloc[:30]
    raw = (tmp_path / "imgs" / "5.png").read_bytes()
    (tmp_path / "imgs" / "5.png").write_bytes(raw[: len(raw) - 30])  # valid header, cut data
    frame.to_csv(path, index=False)
    tasks = [{"name": "size", "kind": "categorical"}]
    with pytest.raises(DataError, match=r"imgs/5.png: cannot decode"):
        build_data(cfg(path=str(path), image_col="file", tasks=tasks, verify_images="decode"))
    with pytest.warns(UserWarning, match=r"skipped 1 bad image"):
        data = build_data(cfg(path=str(path), image_col="file", tasks=tasks, verify_images="decode",
                              skip_bad_images=True)).data
    assert len(data.examples) == 29 and "imgs/5.png" not in set(data.examples.ids)


def test_image_table_cli_run(tmp_path):
    from sharewise.cli.main import main

    path = make_table(tmp_path)
    frame = pd.read_csv(path).iloc[:30]
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    rc = main(["run", "--data", str(path), "--image-col", "file", "--cat-target", "size", "--num-target", "weight",
               "--backbone", "convnet", "--set", "backbone.widths=[4,8]", "--epochs", "1", "--out", str(out),
               "--no-progress", "--set", "train.threads=1", "--set", "output.tensorboard=false"])
    assert rc == 0
    import json

    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"size", "weight"}
    state = json.loads((out / "data_state.json").read_text())
    assert state["image_col"] == "file" and state["preprocessing"]["decode"]["size"] == [9, 9]


# ----------------------------------------------------------------- cache, preprocessing, augmentation


def test_memory_cache_decodes_each_image_once(tmp_path, monkeypatch):
    from sharewise.data import image_ops

    root = make_folder(tmp_path / "pets")
    data = build_data(cfg(path=str(root), normalize="none")).data
    calls = []
    original = image_ops.ImageFiles.decode
    monkeypatch.setattr(image_ops.ImageFiles, "decode",
                        lambda self, i, spec: calls.append(i) or original(self, i, spec))
    for _ in range(3):
        for _batch in data.batches("train", 4, shuffle=True):
            pass
    assert len(calls) == len(set(calls)) <= data.split_size("train")


def test_disk_cache_is_reused_and_equal(tmp_path, monkeypatch):
    from sharewise.data import image_ops

    root = make_folder(tmp_path / "pets")
    opts = dict(path=str(root), cache="disk", cache_dir=str(tmp_path / "cache"))
    first = build_data(cfg(**opts)).data
    x1 = first.examples.get_inputs(np.arange(18))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    monkeypatch.setattr(image_ops.ImageFiles, "decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    second = build_data(cfg(**opts)).data
    assert torch.equal(second.examples.get_inputs(np.arange(18)), x1)
    monkeypatch.undo()
    assert torch.equal(build_data(cfg(path=str(root))).data.examples.get_inputs(np.arange(18)), x1)  # = memory cache


def test_augmentation_training_only_deterministic_and_shift_exact(tmp_path):
    folder = make_idx(tmp_path / "m")
    data = build_data(cfg(path=str(folder), normalize="none", augment={"crop_padding": 2, "hflip": True})).data
    idx = data.splits["train"][:16]
    plain = data.examples.get_inputs(idx)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a, b = data.examples.get_inputs(idx, g()), data.examples.get_inputs(idx, g())
    assert torch.equal(a, b) and not torch.equal(a, plain) and a.shape == plain.shape
    # evaluation batches (no generator) are never augmented
    assert torch.equal(next(data.batches("val", 4))[0], data.examples.get_inputs(data.splits["val"][:4]))
    # a pure shift moves pixels exactly and fills with the background
    aug = Augment(AugmentOptions(crop_padding=2), fill=[0.0])
    x = torch.rand(64, 1, 8, 8) + 1.0
    y = aug(x, torch.Generator().manual_seed(0))
    for i in range(64):
        found = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                 if torch.equal(y[i], _shift(x[i], dx, dy))]
        assert found, i
    r = Augment(AugmentOptions(rotate=10), fill=[0.0])(x, torch.Generator().manual_seed(0))
    assert r.shape == x.shape and torch.isfinite(r).all()


def _shift(img, dx, dy):
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    yd, xd = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., ys, xs] = img[..., yd, xd]
    return out


def test_derived_task_expressions_are_safe():
    frame = pd.DataFrame({"label": [0, 3, 5, None], "a.b": ["x", "y", "x", "z"]})
    out = add_derived_columns(frame, {"parity": "label % 2", "large": "label >= 5", "s": "'hi' if label > 2 else 'lo'",
                                      "q": "`a.b` in ['x', 'z']", "m": "max(label, 4) - 1"})
    assert out["parity"].tolist()[:3] == [0, 1, 1] and pd.isna(out["parity"].iloc[3])
    assert out["large"].tolist()[:3] == [False, False, True] and out["large"].iloc[3] is None
    assert out["s"].tolist()[:3] == ["lo", "hi", "hi"] and out["q"].tolist()[:3] == [True, False, True]
    assert out["m"].tolist()[:3] == [3, 3, 4]
    for bad, words in [("__import__('os')", "unknown function"), ("label.real", "Attribute"),
                       ("(lambda: 1)()", "unknown function"), ("lambda: 1", "Lambda is not allowed"),
                       ("lable + 1", "did you mean: label"),
                       ("label +", "syntax error")]:
        with pytest.raises(ConfigError, match=words):
            add_derived_columns(frame, {"t": bad})
    with pytest.raises(ConfigError, match="already exists"):
        add_derived_columns(frame, {"label": "label + 1"})


# ----------------------------------------------------------------- conv backbone


@pytest.mark.parametrize("shape,opts", [
    ((1, 28, 28), {}),
    ((1, 105, 105), {"widths": [8, 8, 16, 16], "stem_stride": 2}),
    ((3, 12, 12), {"widths": [8, 4], "shortcut": "conv", "pool": [True, False], "norm": "group"}),
])
def test_convnet_block_interface_identity_gates_equal_plain(shape, opts):
    torch.manual_seed(0)
    net = backbone_factory("convnet", opts, InputSpec("image", shape))().eval()
    x = torch.randn(2, *shape)
    h = net.stem(x)
    for block in net.blocks:
        assert block.shortcut(h).shape == block(h).shape  # S(x) has F(x)'s shape, so a gate can mix them
        skip = apply_block(block, h, torch.tensor([0.0, 1.0]))
        assert torch.equal(skip, block.shortcut(h))
        h = block(h)
    gates = torch.tensor([[1.0, 0.0]] * net.num_blocks)
    assert torch.allclose(net(x), net(x, gates=gates))
    assert net(x).shape == (2, net.out_features)


def test_convnet_sizes_and_errors():
    net = backbone_factory("convnet", {"head": "flatten"}, InputSpec("image", (1, 105, 105)))()
    assert net.out_features == 64 * 6 * 6 and net(torch.zeros(2, 1, 105, 105)).shape == (2, 2304)
    with pytest.raises(ConfigError, match="parameter-free shortcut"):
        backbone_factory("convnet", {"widths": [8, 4]}, InputSpec("image", (1, 8, 8)))()
    with pytest.raises(ConfigError, match="below 1 pixel"):
        backbone_factory("convnet", {"widths": [4] * 5}, InputSpec("image", (1, 8, 8)))()
    with pytest.raises(ConfigError, match="convnet"):
        backbone_factory("convnet", {}, InputSpec("vector", (5,)))


# ----------------------------------------------------------------- methods on both shapes


def _labelled_test_examples(data, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and class indices of the test examples with a known ``task`` target, either shape."""
    if data.shape == "shared":
        examples, rows = data.examples, data.splits["test"]
    else:
        examples, rows = data.examples[task], data.splits[task]["test"]
    y, known = examples.get_targets(rows, [task])[task]
    return examples.get_inputs(rows)[known], y[known]


@pytest.mark.parametrize("method", ["hard", "independent"])
def test_methods_run_on_per_task_and_shared_image_data(tmp_path, method):
    """A few seconds of training learn every task of both shapes (test accuracy well above the
    test split's majority-class rate), and results.json's test accuracy is the saved model's own
    on the test split, so evaluating another split or a run that never stepped fails."""
    import json

    import sharewise
    from sharewise.engine.runner import prepare, run

    root = make_omniglot(tmp_path / "omni", as_zip=True, size=10)
    mnist = make_idx(tmp_path / "m")
    for name, data in (("omni", {"path": str(root)}),
                       ("idx", {"path": str(mnist), "derived_tasks": {"parity": "label % 2"}})):
        # both sets encode the class by where the marker is: the flattened head keeps the position
        out = tmp_path / f"{name}-{method}"
        c = validate_config({"data": data, "method": {"name": method}, "optim": {"lr": 1e-2},
                             "backbone": {"name": "convnet", "widths": [4, 8], "pool": [True, True], "head": "flatten"},
                             "train": {"epochs": 5, "threads": 1, "progress": False, "batch_size": 8},
                             "output": {"dir": str(out), "tensorboard": False}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = prepare(c)
            run(ctx)
        results = json.loads((out / "results.json").read_text())
        assert set(results["tasks"]) == set(ctx.data.task_names)
        model = sharewise.load_run(out).model
        for task in ctx.data.task_names:
            x, y = _labelled_test_examples(ctx.data, task)
            with torch.no_grad():
                predicted = model(x, tasks=[task])[task].argmax(1)
            test = results["tasks"][task]["test"]
            assert test["n"] == len(y)
            assert test["accuracy"] == pytest.approx(float((predicted == y).double().mean()), abs=1e-9)
            chance = np.bincount(y.numpy()).max() / len(y)
            assert test["accuracy"] >= chance + 0.2, (name, task, test["accuracy"], chance)


def test_omniglot_task_weights_mean_divides_by_the_number_of_tasks(tmp_path):
    root = make_omniglot(tmp_path / "omni", as_zip=True)
    summed = build_data(cfg(path=str(root))).data
    mean = build_data(cfg(path=str(root), task_weights="mean")).data
    assert [t.weight for t in summed.tasks] == [1.0, 1.0, 1.0]
    assert [t.weight for t in mean.tasks] == pytest.approx([1 / 3] * 3)
