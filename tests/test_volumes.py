"""Volume source (NIfTI/.npy + phenotype table), preprocessing, cache, augmentation, ``data.join``
and the 3-D ResNets' block interface, on small files each test writes."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sharewise.backbones import apply_block, backbone_factory
from sharewise.config import load_config, validate_config
from sharewise.data import InputSpec, build_data
from sharewise.data import volume as V
from sharewise.errors import ConfigError, DataError

nib = pytest.importorskip("nibabel")

# ----------------------------------------------------------------- helpers


def write_nifti(path: Path, data: np.ndarray, *, slope: float | None = None, inter: float = 0.0,
                affine: np.ndarray | None = None) -> Path:
    """A NIfTI-1 file; with ``slope`` the stored values are ``data`` and the header says
    intensity = data · slope + inter (nibabel keeps the given scale factors for integer data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    if slope is not None:
        img.header.set_data_dtype(data.dtype)
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def brain(rng: np.random.Generator, shape=(10, 12, 9), level: float = 100.0) -> np.ndarray:
    """Background 0 around a bright, noisy box: a bimodal volume (uint8)."""
    a = np.zeros(shape, dtype=np.float64)
    a[2:-2, 3:-3, 2:-2] = level + 10 * rng.normal(size=(shape[0] - 4, shape[1] - 6, shape[2] - 4))
    return np.clip(a, 0, 255).astype(np.uint8)


def make_study(root: Path, n: int = 24, *, npy_every: int = 0, slope: float = 2.0) -> Path:
    """``participants.csv`` (MRID, Age, Sex, site) and ``t1/<MRID>-HH-<k>_T1.nii.gz`` volumes,
    the volume's brightness growing with age so that a model can learn it."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        mrid = f"IXI{i:03d}"
        age = 20 + 60 * i / max(n - 1, 1)
        rows.append({"MRID": mrid, "Age": round(age, 2), "Sex": "F" if i % 2 else "M", "site": "HH"})
        write_nifti(root / "t1" / f"{mrid}-HH-{1000 + i}_T1.nii.gz", brain(rng, level=60 + age), slope=slope)
    path = root / "participants.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def vcfg(path: Path, **data):
    extra = {k: data.pop(k) for k in ("tasks", "split", "train", "backbone", "method", "output") if k in data}
    tasks = extra.pop("tasks", [{"name": "Age", "kind": "numerical"}, {"name": "Sex", "kind": "categorical"}])
    base = {"source": "volumes", "path": str(path), "id_col": "MRID", "volume_pattern": "t1/{id}-*_T1.nii.gz"}
    return validate_config({"data": {**base, **data}, "tasks": tasks, **extra})


def quiet_build(c):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = build_data(c)
    return loaded, [str(w.message) for w in caught]


# ----------------------------------------------------------------- reading and preprocessing


def test_nifti_scale_factors_and_canonical_orientation(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 200, size=(6, 5, 4)).astype(np.uint8)
    p = write_nifti(tmp_path / "scaled.nii.gz", raw, slope=2.5, inter=10.0)
    assert nib.load(str(p)).dataobj.slope == 2.5  # the file really carries scale factors
    a = V.read_volume(str(p))
    assert a.shape == (1, 6, 5, 4) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], raw * 2.5 + 10.0, rtol=1e-6)
    # an LAS image (x axis pointing left) is flipped to RAS along axis 0; canonical: false keeps it
    las = write_nifti(tmp_path / "las.nii", raw, affine=np.diag([-2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_array_equal(V.read_volume(str(las))[0], raw[::-1])
    np.testing.assert_array_equal(V.read_volume(str(las), canonical=False)[0], raw)
    # axes permuted (PSR like IXI): the header shape is reported in the canonical order, like the data
    psr = np.array([[0, 0, -2.0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    perm = write_nifti(tmp_path / "psr.nii.gz", raw, affine=psr)
    channels, shape = V.volume_header(str(perm))
    assert channels == 1 and shape == V.read_volume(str(perm)).shape[1:] == (4, 6, 5)


def test_npy_volumes_3d_and_channels_first(tmp_path):
    a = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", np.stack([a, -a]).astype(np.float64))
    assert V.read_volume(str(tmp_path / "a.npy")).shape == (1, 3, 4, 5)
    b = V.read_volume(str(tmp_path / "b.npy"))
    assert b.shape == (2, 3, 4, 5) and b.dtype == np.float32 and b[1, 0, 0, 1] == -1
    assert V.volume_header(str(tmp_path / "b.npy")) == (2, (3, 4, 5))
    np.save(tmp_path / "flat.npy", np.zeros((4, 5)))
    with pytest.raises(DataError, match="flat.npy.*3 dimensions"):
        V.read_volume(str(tmp_path / "flat.npy"))


def test_normalisation_values_masks_and_otsu():
    rng = np.random.default_rng(2)
    vol = brain(rng).astype(np.float32)[None]
    inside = vol[0] > 0
    z = V.Preprocess(vol.shape[1:], 1, normalize="zscore")(vol)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    mm = V.Preprocess(vol.shape[1:], 1, normalize="minmax")(vol)
    assert mm.min() == 0.0 and abs(mm.max() - 1.0) < 1e-6
    for mask in ("nonzero", "otsu", "threshold"):
        zm = V.Preprocess(vol.shape[1:], 1, normalize="zscore", mask=mask, mask_threshold=1.0)(vol)[0]
        assert abs(zm[inside].mean()) < 1e-4 and abs(zm[inside].std() - 1) < 1e-3, mask
        assert zm[~inside].max() < -2  # the background lies far below the brain after masked z-scoring
    t = V.otsu_threshold(vol[0].ravel())
    assert ((vol[0] > t) == inside).all()  # Otsu separates the box from the background exactly
    clipped = V.Preprocess(vol.shape[1:], 1, normalize="none", clip_percentiles=(0, 50))(vol)
    assert clipped.max() == np.percentile(vol, 50)


def test_resize_crop_pad_and_dtype():
    x = np.arange(2 * 6 * 8 * 4, dtype=np.float32).reshape(2, 6, 8, 4)
    r = V.Preprocess((3, 4, 2), 2, normalize="none")(x)
    assert r.shape == (2, 3, 4, 2)
    assert r[0, 0, 0, 0] == x[0, :2, :2, :2].mean()  # area averaging when shrinking
    up = V.Preprocess((12, 16, 8), 2, normalize="none", dtype="float16")(x)
    assert up.shape == (2, 12, 16, 8) and up.dtype == np.float16
    cp = V.Preprocess((4, 10, 4), 2, fit="crop_pad", normalize="none")(x)
    assert cp.shape == (2, 4, 10, 4)
    np.testing.assert_array_equal(cp[:, :, 1:9], x[:, 1:5])  # centred crop of D, centred pad of H
    assert (cp[:, :, 0] == x.min()).all() and (cp[:, :, 9] == x.min()).all()
    with pytest.raises(DataError, match="2 channel"):
        V.Preprocess((3, 4, 2), 1)(x, "two.npy")


# ----------------------------------------------------------------- the source: matching, shapes, counts


def test_pattern_glob_matches_ids_with_one_listing(tmp_path, monkeypatch):
    path = make_study(tmp_path / "study", n=12)
    (tmp_path / "study" / "t1" / "IXI999-HH-5_T1.nii.gz").write_bytes(b"")  # a volume without a row
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(V.os, "scandir", lambda d: listed.append(d) or real_scandir(d))
    loaded, msgs = quiet_build(vcfg(path, volume_shape=[8, 8, 8]))
    data = loaded.data
    assert len(listed) == 1  # one directory listing for all subjects
    assert data.input_spec == InputSpec("volume", (1, 8, 8, 8))
    assert data.examples.get_inputs(np.arange(3)).shape == (3, 1, 8, 8, 8)
    assert data.meta["volumes"] == {"rows": 12, "no_volume": 0, "bad_volumes": 0, "volumes_without_row": 1,
                                    "dropped_no_target": 0, "used": 12}
    assert any("1 volume file(s) match" in m for m in msgs)
    # the exact pattern finds the same files; ids are the table's
    exact = {r.MRID: f"{r.MRID}-HH-{1000 + i}" for i, r in enumerate(pd.read_csv(path).itertuples())}
    paths, info = V.locate_by_pattern(list(exact), "t1/{id}-*_T1.nii.gz", tmp_path / "study")
    assert [Path(p).name for p in paths] == [f"{v}_T1.nii.gz" for v in exact.values()]
    stems = list(exact.values())
    paths2, _ = V.locate_by_pattern(stems, "t1/{id}_T1.nii.gz", tmp_path / "study")
    assert paths2 == paths


def test_pattern_edge_cases(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    for name in ("s1_a.npy", "s1_b.npy", "s10_a.npy", "s2.npy"):
        np.save(d / name, np.zeros((2, 2, 2)))
    paths, _ = V.locate_by_pattern(["s10", "s2", "s3", None], "{id}_a.npy", d)
    assert paths == [str(d / "s10_a.npy"), None, None, None]
    with pytest.raises(DataError, match="'s1' matches 2 files"):
        V.locate_by_pattern(["s1"], "{id}_*.npy", d)
    paths, _ = V.locate_by_pattern([10, 2.0], "s{id}*.npy", d)  # numeric ids, integral floats as integers
    assert [Path(p).name for p in paths] == ["s10_a.npy", "s2.npy"]
    (d / "sub-7" / "anat").mkdir(parents=True)
    np.save(d / "sub-7" / "anat" / "T1w.npy", np.zeros((2, 2, 2)))
    paths, _ = V.locate_by_pattern(["7", "8"], "sub-{id}/anat/T1w.npy", d)
    assert paths == [str(d / "sub-7" / "anat" / "T1w.npy"), None]
    for bad in ("t1/T1.nii.gz", "*/{id}.npy", "x*{id}.npy"):
        with pytest.raises(ConfigError, match="volume_pattern"):
            V.locate_by_pattern(["a"], bad, d)


def test_path_column_npy_missing_volume_and_no_target_counts(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(20):
        np.save(tmp_path / f"v{i}.npy", brain(rng, shape=(6, 6, 6)).astype(np.float32))
        rows.append({"file": f"v{i}.npy", "age": 30 + i, "sex": "MF"[i % 2]})
    rows[3]["file"] = None  # no volume
    rows[4]["age"], rows[4]["sex"] = None, None  # no target
    pd.DataFrame(rows).to_csv(tmp_path / "pheno.csv", index=False)
    c = validate_config({"data": {"path": str(tmp_path / "pheno.csv"), "volume_col": "file"},
                         "tasks": [{"name": "age", "kind": "numerical"}, {"name": "sex", "kind": "categorical"}]})
    loaded, msgs = quiet_build(c)  # the source is chosen from data.volume_col
    meta = loaded.data.meta["volumes"]
    assert (meta["no_volume"], meta["dropped_no_target"], meta["used"]) == (1, 1, 18)
    assert any("1 of 20 subject(s) have no volume" in m for m in msgs)
    assert any("no known target" in m for m in msgs)
    assert loaded.state["volumes"] == meta and loaded.state["kind"] == "volumes"
    assert "v3.npy" not in set(loaded.data.examples.ids) and loaded.data.input_spec.shape == (1, 6, 6, 6)
    with pytest.raises(ConfigError, match="volume column"):
        build_data(validate_config({"data": {"path": str(tmp_path / "pheno.csv"), "volume_col": "file"},
                                    "tasks": [{"name": "file", "kind": "categorical"}]}))


def test_missing_and_corrupt_volumes_error_or_skip_with_counts(tmp_path):
    path = make_study(tmp_path / "s", n=14)
    t1 = tmp_path / "s" / "t1"
    corrupt = next(t1.glob("IXI003-*"))
    corrupt.write_bytes(b"this is not a NIfTI file at all" * 20)
    with pytest.raises(DataError, match=corrupt.name):
        build_data(vcfg(path, volume_shape=[8, 8, 8]))
    loaded, msgs = quiet_build(vcfg(path, volume_shape=[8, 8, 8], skip_bad_volumes=True))
    assert loaded.data.meta["volumes"]["bad_volumes"] == 1 and loaded.data.meta["volumes"]["used"] == 13
    assert any("skipped 1 unreadable volume" in m and corrupt.name in m for m in msgs)
    # truncated after a valid header: found from the header and the file's length, without decoding
    truncated = write_nifti(next(t1.glob("IXI005-*")),
                            np.random.default_rng(0).integers(0, 200, (20, 20, 20)).astype(np.uint8))
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) * 3 // 4])  # noise: incompressible
    corrupt.unlink()
    with pytest.raises(DataError, match=f"{truncated.name}: truncated volume"):
        build_data(vcfg(path, volume_shape=[8, 8, 8]))
    corrupt.write_bytes(b"this is not a NIfTI file at all" * 20)
    lazy, _ = quiet_build(vcfg(path, volume_shape=[8, 8, 8], skip_bad_volumes=True))
    assert lazy.data.meta["volumes"]["bad_volumes"] == 2 and lazy.data.meta["volumes"]["used"] == 12
    eager, msgs = quiet_build(vcfg(path, volume_shape=[8, 8, 8], skip_bad_volumes=True, verify_volumes="decode"))
    assert eager.data.meta["volumes"]["bad_volumes"] == 2 and eager.data.meta["volumes"]["used"] == 12
    eager.data.examples.get_inputs(np.arange(12))
    # a path column naming a file that does not exist
    files = ["t1/nope.nii.gz"] + [f"t1/{p.name}" for p in sorted(t1.glob("IXI01*"))]
    frame = pd.DataFrame({"file": files, "y": range(len(files))})
    frame.to_csv(tmp_path / "s" / "paths.csv", index=False)
    with pytest.raises(DataError, match="nope.nii.gz"):
        build_data(validate_config({"data": {"path": str(tmp_path / "s" / "paths.csv"), "volume_col": "file"},
                                    "tasks": [{"name": "y", "kind": "numerical"}]}))


def test_truncated_volumes_found_from_header_and_length(tmp_path):
    """An uncompressed .nii, a .nii.gz and a .npy cut short after a valid header are all refused
    when the source is built; a gzip whose trailer disagrees but whose data is complete passes."""
    data = np.random.default_rng(0).integers(0, 200, (10, 12, 9)).astype(np.uint8)
    for name in ("a.nii", "a.nii.gz"):
        path = write_nifti(tmp_path / name, data)
        assert V.volume_header(str(path)) == (1, (10, 12, 9))
        path.write_bytes(path.read_bytes()[:-50])
        with pytest.raises(DataError, match=f"{name}: truncated volume"):
            V.volume_header(str(path))
    npy = tmp_path / "a.npy"
    np.save(npy, data)
    npy.write_bytes(npy.read_bytes()[:-50])
    with pytest.raises(DataError, match="a.npy"):
        V.volume_header(str(npy))
    padded = write_nifti(tmp_path / "b.nii.gz", data)
    import gzip

    padded.write_bytes(gzip.compress(gzip.decompress(padded.read_bytes()) + b"\0" * 7))
    assert V.volume_header(str(padded)) == (1, (10, 12, 9))


def test_cli_truncated_volume_refused_before_the_run_directory_is_written(tmp_path, capsys):
    """A truncated volume: exit 2, one line naming the file, no run directory; the corrected rerun
    to the same --out needs no --overwrite."""
    from sharewise.cli.main import main

    path = make_study(tmp_path / "s", n=14)
    victim = write_nifti(next((tmp_path / "s" / "t1").glob("IXI006-*")),  # noise: the header survives the cut
                         np.random.default_rng(0).integers(0, 200, (10, 12, 9)).astype(np.uint8))
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) * 3 // 4])
    out = tmp_path / "run"
    argv = ["run", "--data", str(path), "--set", "data.source=volumes", "--id-col", "MRID",
            "--set", "data.volume_pattern=t1/{id}-*_T1.nii.gz", "--set", "data.volume_shape=[8,8,8]",
            "--cat-target", "Sex", "--num-target", "Age", "--backbone", "resnet3d",
            "--set", "backbone.depth=10", "--set", "backbone.width=2", "--set", "train.max_steps=2",
            "--epochs", "1", "--out", str(out), "--no-progress", "--set", "train.threads=1",
            "--set", "train.batch_size=8", "--set", "output.tensorboard=false"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sharewise: error")]
    assert len(errors) == 1 and f"{victim.name}: truncated volume" in errors[0], err
    victim.write_bytes(good)
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "results.json").exists()


def test_no_volume_at_all_and_shape_mismatch_errors(tmp_path):
    path = make_study(tmp_path / "s", n=14)
    with pytest.raises(DataError, match="no subject has a volume.*IXI000-HH-1000_T1.nii.gz"):
        build_data(vcfg(path, volume_pattern="t1/{id}.nii.gz"))
    with pytest.raises(ConfigError, match="id_col"):
        build_data(validate_config({"data": {"source": "volumes", "path": str(path), "volume_pattern": "t1/{id}.nii"},
                                    "tasks": [{"name": "Age", "kind": "numerical"}]}))
    with pytest.raises(ConfigError, match="exactly one of volume_pattern"):
        build_data(vcfg(path, volume_col="MRID"))
    write_nifti(next((tmp_path / "s" / "t1").glob("IXI002-*")), np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(DataError, match="differs from the first volume's.*volume_shape"):
        build_data(vcfg(path))
    assert build_data(vcfg(path, volume_shape=[4, 4, 4])).data.input_spec.shape == (1, 4, 4, 4)


# ----------------------------------------------------------------- cache


def test_memory_cache_reads_each_file_once(tmp_path, monkeypatch):
    path = make_study(tmp_path / "s", n=16)
    data = build_data(vcfg(path, volume_shape=[6, 6, 6], train={"batch_size": 4})).data
    calls = []
    real = V.read_volume
    monkeypatch.setattr(V, "read_volume", lambda p, **k: calls.append(p) or real(p, **k))
    for epoch in range(2):
        for _ in data.batches("train", 4, shuffle=True, epoch=epoch, augment=True):
            pass
    n_train = data.split_size("train")
    assert len(calls) == n_train == len(set(calls)) == data.examples.inputs.cache.reads


def test_disk_cache_reused_keyed_by_file_and_settings(tmp_path, monkeypatch):
    path = make_study(tmp_path / "s", n=12)
    opts = dict(volume_shape=[6, 6, 6], cache="disk", cache_dir=str(tmp_path / "cache"))
    first = build_data(vcfg(path, **opts)).data
    x1 = first.examples.get_inputs(np.arange(12))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 12
    second = build_data(vcfg(path, **opts)).data
    monkeypatch.setattr(V, "read_volume", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    assert torch.equal(second.examples.get_inputs(np.arange(12)), x1)
    monkeypatch.undo()
    assert second.examples.inputs.cache.reads == 0
    # a changed file (new mtime) and changed settings are new keys, never stale
    f = Path(second.examples.inputs.cache.paths[0])
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    third = build_data(vcfg(path, **opts)).data
    third.examples.get_inputs(np.arange(12))
    assert third.examples.inputs.cache.reads == 1
    fourth = build_data(vcfg(path, **{**opts, "normalize": "minmax"})).data
    x4 = fourth.examples.get_inputs(np.arange(12))
    assert fourth.examples.inputs.cache.reads == 12 and float(x4.min()) >= -1e-6
    memory = build_data(vcfg(path, volume_shape=[6, 6, 6])).data
    assert torch.equal(memory.examples.get_inputs(np.arange(12)), x1)


# ----------------------------------------------------------------- augmentation


def test_augmentation_training_only_seeded_and_exact_flip_and_shift():
    x = torch.randn(4, 1, 6, 8, 5)
    flip = V.VolumeAugment(V.VolumeAugmentOptions(flip=[0, 2]))
    g = torch.Generator().manual_seed(0)
    y = flip(x, g)
    for b in range(4):  # each volume is itself flipped along a subset of the chosen axes
        assert any(torch.equal(y[b], x[b].flip(dims) if dims else x[b]) for dims in ([], [1], [3], [1, 3]))
    assert torch.equal(y, flip(x, torch.Generator().manual_seed(0)))
    # zero parameters: the affine path is the identity; a whole-voxel shift moves the content exactly
    theta = V.affine_theta(torch.zeros(1, 3), torch.ones(1), torch.zeros(1, 3), (6, 8, 5))
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 6, 8, 5], align_corners=False)
    assert torch.allclose(torch.nn.functional.grid_sample(x[:1], grid, align_corners=False), x[:1], atol=1e-5)
    theta = V.affine_theta(torch.zeros(1, 3), torch.ones(1), torch.tensor([[1.0, 0.0, 0.0]]), (6, 8, 5))
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 6, 8, 5], align_corners=False)
    shifted = torch.nn.functional.grid_sample(x[:1], grid, align_corners=False)
    assert torch.allclose(shifted[0, 0, 1:], x[0, 0, :-1], atol=1e-5)
    aug = V.VolumeAugment(V.VolumeAugmentOptions(rotate=10, scale=0.1, shift=1))
    z = aug(x, torch.Generator().manual_seed(1))
    assert z.shape == x.shape and torch.isfinite(z).all() and not torch.equal(z, x)
    assert z.min() >= x.amin(dim=(1, 2, 3, 4)).min() - 1e-5  # filled with the background, no new extremes


def test_source_applies_augmentation_to_training_batches_only(tmp_path):
    path = make_study(tmp_path / "s", n=12)
    data = build_data(vcfg(path, volume_shape=[6, 6, 6], augment={"flip": [0]})).data
    plain = data.examples.get_inputs(np.arange(12))  # no generator (evaluation): never augmented
    assert torch.equal(plain, data.examples.get_inputs(np.arange(12)))
    aug = data.examples.get_inputs(np.arange(12), torch.Generator().manual_seed(3))
    flipped = [not torch.equal(a, p) for a, p in zip(aug, plain)]
    assert any(flipped) and not all(flipped)
    assert all(torch.equal(a, p.flip(1) if f else p) for a, p, f in zip(aug, plain, flipped))
    with pytest.raises(ConfigError, match="flip"):
        build_data(vcfg(path, augment={"flip": [3]}))


# ----------------------------------------------------------------- data.join


def _tables(tmp_path: Path):
    rng = np.random.default_rng(4)
    ids = [f"IXI{i:03d}" for i in range(40)]
    pheno = pd.DataFrame({"MRID": ids, "Age": rng.uniform(20, 80, 40).round(1), "Sex": rng.choice(["F", "M"], 40)})
    regions = pd.DataFrame({"ID": ids[::-1] + ["IXI999"], "702": rng.normal(1.4e6, 1e5, 41),
                            "4": rng.normal(2e3, 3e2, 41)})
    pheno.to_csv(tmp_path / "participants.csv", index=False)
    regions.to_csv(tmp_path / "regions.csv", index=False)
    return pheno, regions


def test_join_left_keeps_rows_in_order_and_inner_counts(tmp_path):
    from sharewise.config import JoinSpec
    from sharewise.data.join import apply_joins

    pheno, regions = _tables(tmp_path)
    spec = JoinSpec(path=str(tmp_path / "regions.csv"), left_on="MRID", right_on="ID")
    out, info = apply_joins(pheno.iloc[:-1], [spec], source="p")
    assert list(out["MRID"]) == list(pheno["MRID"].iloc[:-1]) and list(out.columns) == ["MRID", "Age", "Sex", "702", "4"]
    row = regions.set_index("ID").loc["IXI007"]
    assert out.set_index("MRID").loc["IXI007", "702"] == row["702"]
    assert info[0] == {"path": str(tmp_path / "regions.csv"), "key": ["MRID", "ID"], "how": "left", "columns": 2,
                       "rows_matched": 39, "rows_unmatched": 0, "other_rows_unused": 2}
    partial = pd.concat([pheno, pd.DataFrame({"MRID": ["X1"], "Age": [50.0], "Sex": ["F"]})], ignore_index=True)
    with pytest.warns(UserWarning, match="1 row.*no match.*kept with missing"):
        left, _ = apply_joins(partial, [spec], source="p")
    assert len(left) == 41 and np.isnan(left["702"].iloc[-1])
    with pytest.warns(UserWarning, match="dropped"):
        inner, info = apply_joins(partial, [spec.model_copy(update={"how": "inner"})], source="p")
    assert len(inner) == 40 and info[0]["rows_unmatched"] == 1
    # text keys in one table, numbers in the other
    text_keys = pd.DataFrame({"k": ["1", "2", "3"], "y": [1.0, 2.0, 3.0]})
    (tmp_path / "t.csv").write_text("k,z\n3,c\n1,a\n2,b\n")
    joined, _ = apply_joins(text_keys, [JoinSpec(path=str(tmp_path / "t.csv"), on="k")], source="n")
    assert list(joined["z"]) == ["a", "b", "c"]


def test_join_errors_name_the_key_file_and_column(tmp_path):
    from sharewise.config import JoinSpec
    from sharewise.data.join import apply_joins

    pheno, regions = _tables(tmp_path)
    with pytest.raises(DataError, match="regions.csv: unknown join key column 'MRID'.*"):
        apply_joins(pheno, [JoinSpec(path=str(tmp_path / "regions.csv"), on="MRID")], source="p")
    with pytest.raises(DataError, match="p: unknown join key column 'id'"):
        apply_joins(pheno, [JoinSpec(path=str(tmp_path / "regions.csv"), left_on="id", right_on="ID")], source="p")
    pd.concat([regions, regions.iloc[:1]]).to_csv(tmp_path / "dupes.csv", index=False)
    with pytest.raises(DataError, match="dupes.csv: join key 'ID' repeats value 'IXI039'"):
        apply_joins(pheno, [JoinSpec(path=str(tmp_path / "dupes.csv"), left_on="MRID", right_on="ID")], source="p")
    regions.rename(columns={"4": "Age"}).to_csv(tmp_path / "clash.csv", index=False)
    with pytest.raises(ConfigError, match=r"\['Age'\].*already in p"):
        apply_joins(pheno, [JoinSpec(path=str(tmp_path / "clash.csv"), left_on="MRID", right_on="ID")], source="p")
    out, _ = apply_joins(pheno, [JoinSpec(path=str(tmp_path / "clash.csv"), left_on="MRID", right_on="ID",
                                          columns=["702"])], source="p")
    assert list(out.columns) == ["MRID", "Age", "Sex", "702"]
    with pytest.raises(ConfigError, match="data.join"):
        validate_config({"data": {"join": {"path": "x.csv"}}})
    with pytest.raises(DataError, match="nothere.csv"):
        apply_joins(pheno, [JoinSpec(path=str(tmp_path / "nothere.csv"), on="MRID")], source="p")


def test_join_from_yaml_on_key_and_split_independent_of_features(tmp_path):
    """``on:`` in YAML (a boolean to YAML 1.1) works; the table run with joined features and the
    volume run on the same subjects get the same seeded split."""
    path = make_study(tmp_path / "s", n=30)
    rng = np.random.default_rng(5)
    ids = pd.read_csv(path)["MRID"].tolist()
    pd.DataFrame({"MRID": ids[::-1], "702": rng.normal(size=30), "601": rng.normal(size=30)}).to_csv(
        tmp_path / "s" / "regions.csv", index=False)
    yml = tmp_path / "table.yaml"
    yml.write_text(f"data:\n  path: {path}\n  id_col: MRID\n  join: {{path: {tmp_path / 's' / 'regions.csv'}, on: MRID}}\n"
                   "tasks:\n  - {name: Sex, kind: categorical}\n  - {name: Age, kind: numerical}\n")
    table = build_data(load_config(yml))
    assert table.data.input_spec.shape == (3,)  # the two joined columns and site (one category)
    assert table.state["join"][0]["rows_matched"] == 30 and table.data.meta["join"][0]["how"] == "left"
    vol = build_data(vcfg(path, volume_shape=[4, 4, 4], tasks=[{"name": "Sex", "kind": "categorical"},
                                                                {"name": "Age", "kind": "numerical"}]))
    plain = build_data(validate_config({"data": {"path": str(path), "id_col": "MRID"},
                                        "tasks": [{"name": "Sex", "kind": "categorical"}, {"name": "Age", "kind": "numerical"}]}))
    rows = [{(r["id"], r["split"], r["subsplit"]) for r in d.data.split_table()} for d in (table, vol, plain)]
    assert rows[0] == rows[1] == rows[2]


# ----------------------------------------------------------------- 3-D backbones


@pytest.mark.parametrize("opts", [
    {"depth": 10, "width": 4},
    {"blocks": [2, 1], "width": 4, "norm": "group"},
    {"depth": 50, "width": 2, "layout": "deeplab"},
    {"blocks": [1, 1], "block": "bottleneck", "widths": [3, 5], "stem": "small", "strides": [1, 2], "dilations": [1, 2]},
])
def test_resnet3d_block_interface_and_identity_gates_equal_plain(opts):
    spec = InputSpec("volume", (2, 16, 16, 16))
    torch.manual_seed(0)
    net = backbone_factory("resnet3d", opts, spec)().eval()
    x = torch.randn(2, *spec.shape)
    h = net.stem(x)
    for block in net.blocks:
        # block(x) is the whole output ReLU(S(x) + G(x)): the shortcut added once, inside the block
        assert torch.allclose(block(h), block.act(block.shortcut(h) + block.residual(h)))
        gated = apply_block(block, h, torch.tensor([0.25, 0.75]))
        assert torch.allclose(gated, 0.25 * block(h) + 0.75 * block.shortcut(h))
        h = block(h)
    gates = torch.tensor([[1.0, 0.0]] * net.num_blocks)
    assert torch.allclose(net(x), net(x, gates=gates))
    assert net(x).shape == (2, net.out_features)


def test_resnet3d_layouts_output_stride_and_errors():
    spec = InputSpec("volume", (1, 32, 32, 32))
    strided = backbone_factory("resnet3d", {"depth": 18, "width": 4}, spec)().eval()
    deeplab = backbone_factory("resnet3d", {"depth": 50, "width": 4, "layout": "deeplab"}, spec)().eval()
    x = torch.randn(1, 1, 32, 32, 32)

    def features(net):
        h = net.stem(x)
        for b in net.blocks:
            h = b(h)
        return h

    assert features(strided).shape == (1, 32, 1, 1, 1) and strided.num_blocks == 8
    assert features(deeplab).shape == (1, 128, 4, 4, 4) and deeplab.num_blocks == 16  # output stride 8
    d3 = [b.conv2.dilation for b in deeplab.blocks]
    assert d3[0] == (1, 1, 1) and d3[-1] == (4, 4, 4)
    with pytest.raises(ConfigError, match="resnet3d"):
        backbone_factory("resnet3d", {}, InputSpec("image", (1, 8, 8)))
    with pytest.raises(ConfigError, match="widths"):
        backbone_factory("resnet3d", {"blocks": [1, 1], "widths": [4]}, spec)


# ----------------------------------------------------------------- end to end


def test_hard_run_on_volumes_writes_counts_to_data_state(tmp_path):
    from sharewise.cli.main import main

    path = make_study(tmp_path / "s", n=20)
    out = tmp_path / "run"
    rc = main(["run", "--data", str(path), "--set", "data.source=volumes", "--id-col", "MRID",
               "--set", "data.volume_pattern=t1/{id}-*_T1.nii.gz", "--set", "data.volume_shape=[16,16,16]",
               "--set", "data.augment={flip: [0], rotate: 5}",
               "--cat-target", "Sex", "--num-target", "Age", "--backbone", "resnet3d",
               "--set", "backbone.depth=10", "--set", "backbone.width=2",
               "--epochs", "1", "--out", str(out), "--no-progress", "--set", "train.threads=1",
               "--set", "train.batch_size=8", "--set", "output.tensorboard=false"])
    assert rc == 0
    state = json.loads((out / "data_state.json").read_text())
    assert state["volumes"]["used"] == 20 and state["input_spec"] == {"kind": "volume", "shape": [1, 16, 16, 16], "dtype": "float32"}
    assert state["preprocessing"]["shape"] == [16, 16, 16]
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"Sex", "Age"} and results["run"]["backbone"] == "resnet3d"


def test_nan_voxels_are_background_and_inf_is_an_error():
    x = np.ones((1, 4, 4, 4), dtype=np.float32)
    x[0, 0] = np.nan
    x[0, 1] = 3.0
    out = V.Preprocess((4, 4, 4), 1, normalize="minmax")(x)
    assert np.isfinite(out).all() and (out[0, 0] == 0).all() and (out[0, 1] == 1).all()
    x[0, 2, 0, 0] = np.inf
    with pytest.raises(DataError, match="bad.npy: the volume contains infinite values"):
        V.Preprocess((4, 4, 4), 1)(x, "bad.npy")


def test_worker_threads_give_the_same_batches_and_decode_each_volume_once(tmp_path):
    path = make_study(tmp_path / "s", n=16)
    kwargs = dict(shuffle=True, seed=1, epoch=0, augment=True)
    plain = build_data(vcfg(path, volume_shape=[6, 6, 6], augment={"flip": [0], "shift": 1})).data
    ahead = build_data(vcfg(path, volume_shape=[6, 6, 6], augment={"flip": [0], "shift": 1})).data
    a = list(plain.batches("train", 3, **kwargs))
    b = list(ahead.batches("train", 3, workers=3, **kwargs))
    assert len(a) == len(b) and all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert ahead.examples.inputs.cache.reads == ahead.split_size("train")


def test_shared_warm_up_decodes_each_volume_once_across_processes(tmp_path, monkeypatch):
    """Two processes (threads here, with a broadcast through a barrier) each decode every other
    volume and receive the rest: together each file is read once, and both hold every volume
    exactly as one process decoding all of them."""
    import threading

    path = make_study(tmp_path / "s", n=11)
    stores = [build_data(vcfg(path, volume_shape=[6, 6, 6])).data.examples.inputs for _ in range(3)]
    calls = []
    real = V.read_volume
    monkeypatch.setattr(V, "read_volume", lambda p, **k: calls.append(p) or real(p, **k))
    sent: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def broadcast_for(rank):
        def broadcast(t, src):
            if rank == src:
                sent[src] = t.clone()
            barrier.wait()
            if rank != src:
                t.copy_(sent[src])
            barrier.wait()
            return t
        return broadcast

    threads = [threading.Thread(target=stores[r].warm, args=(r, 2, broadcast_for(r))) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = np.unique(stores[0].rows)
    assert sorted(calls) == sorted({c for c in calls}) and len(calls) == len(rows) == 11
    assert [stores[r].cache.reads for r in range(2)] == [6, 5]
    every = np.arange(len(stores[0]))
    expected = stores[2][every]  # one process, decoding as it goes
    for r in range(2):
        assert stores[r].cache._done.all()
        assert torch.equal(stores[r][every], expected)
    assert stores[0].cache.reads == 6  # reading the store afterwards decodes nothing more
