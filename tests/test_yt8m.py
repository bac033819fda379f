"""The Youtube-8M source: vertical tasks, splits by video id or by file, bad input, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sharewise.config import validate_config
from sharewise.data.sources import build_data
from sharewise.data.tfrecord import write_tfrecord
from sharewise.errors import ConfigError, DataError

SAMPLE = Path("/work/shared/data/yt8m")
VOCAB = """Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl,Vertical1,Vertical2,Vertical3,WikiDescription
0,10,/m/0,Game,u,Games,,,"d"
1,10,/m/1,Video game,u,Games,,,"d, with comma"
2,10,/m/2,Concert,u,Arts & Entertainment,,,"d"
3,10,/m/3,Dance,u,Arts & Entertainment,,,"d"
4,10,/m/4,Newscast,u,News,,,"d"
5,10,/m/5,Football,u,Sports,,,"d"
6,10,/m/6,Rugby,u,Sports,,,"no video has it"
"""


def _videos(n, seed, prefix):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = sorted(set(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist()))
        out.append({"id": f"{prefix}{i:03d}".encode(), "labels": np.array(labels, dtype=np.int64),
                    "mean_rgb": rng.normal(size=1024).astype(np.float32),
                    "mean_audio": rng.normal(size=128).astype(np.float32)})
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("yt8m")
    (root / "vocabulary.csv").write_text(VOCAB)
    all_videos = []
    for k in range(3):
        vids = _videos(30, k, f"s{k}")
        write_tfrecord(root / f"train{k:04d}.tfrecord", vids)
        all_videos.append(vids)
    return root, all_videos


def _cfg(data, **sections):
    return validate_config({"data": {"source": "yt8m", **data}, **sections})


def test_vertical_tasks_targets_and_weights(shards):
    root, videos = shards
    loaded = build_data(_cfg({"path": str(root), "verticals": ["Games", "Arts & Entertainment", "Sports"]}))
    data = loaded.data
    assert data.shape == "per_task"
    assert [t.name for t in data.tasks] == ["games", "arts_entertainment", "sports"]
    assert [t.classes for t in data.tasks] == [[0, 1], [2, 3], [5, 6]]
    assert all(t.kind == "multilabel" for t in data.tasks)
    # C_t × mean-over-classes BCE, averaged over the T tasks
    assert [t.weight for t in data.tasks] == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    flat = {v["id"].decode(): set(v["labels"].tolist()) for vs in videos for v in vs}
    games = data.examples["games"]
    assert set(games.ids) == {i for i, lab in flat.items() if lab & {0, 1}}
    for row, vid in enumerate(games.ids):
        assert games.targets["games"][row].tolist() == [0 in flat[vid], 1 in flat[vid]]
    # the input is [mean_rgb, mean_audio], raw
    first = videos[0][0]
    row = list(games.ids).index("s0000") if "s0000" in set(games.ids) else None
    if row is not None:
        x = games.get_inputs(np.array([row]))[0].numpy()
        np.testing.assert_array_equal(x, np.concatenate([first["mean_rgb"], first["mean_audio"]]))
    assert loaded.data.input_spec.shape == (1152,)


def _video_splits(data):
    seen: dict[str, str] = {}
    for t in data.task_names:
        ids = data.examples[t].ids
        for split in ("train", "val", "test"):
            for i in data.splits[t][split]:
                assert seen.setdefault(ids[i], split) == split  # one split per video, whatever the task
    return seen


def test_split_by_video_is_seeded_shared_by_tasks_and_order_free(shards, tmp_path):
    root, _ = shards
    a = _video_splits(build_data(_cfg({"path": str(root / "train*.tfrecord"), "verticals": "all"},
                                      split={"seed": 3})).data)
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 63, "val": 14, "test": 13}  # 70/15/15 of 90 videos (largest remainder)
    again = _video_splits(build_data(_cfg({"path": str(root), "verticals": "all"}, split={"seed": 3})).data)
    assert again == a
    # the same shards given in another order: the same split (videos are ordered by id first)
    files = sorted(root.glob("train*.tfrecord"))
    for k, f in enumerate(reversed(files)):
        (tmp_path / f"part{k}.tfrecord").write_bytes(f.read_bytes())
    (tmp_path / "vocabulary.csv").write_text(VOCAB)
    assert _video_splits(build_data(_cfg({"path": str(tmp_path), "verticals": "all"}, split={"seed": 3})).data) == a
    other = _video_splits(build_data(_cfg({"path": str(root), "verticals": "all"}, split={"seed": 4})).data)
    assert other != a


def test_file_wise_split(shards):
    root, _ = shards
    files = sorted(root.glob("train*.tfrecord"))
    data = build_data(_cfg({"files": {"train": [str(root / "train000[01].tfrecord")], "val": [str(files[2])]},
                            "verticals": "all"})).data
    for t in data.task_names:
        ids = data.examples[t].ids
        assert all(ids[i].startswith(("s0", "s1")) for i in data.splits[t]["train"])
        assert all(ids[i].startswith("s2") for i in data.splits[t]["val"])
        assert len(data.splits[t]["test"]) == 0
    with pytest.raises(ConfigError, match="either data.path"):
        build_data(_cfg({"path": str(root), "files": {"train": [str(files[0])]}, "verticals": "all"}))


def test_shared_layout_masks(shards):
    root, videos = shards
    data = build_data(_cfg({"path": str(root), "verticals": ["News", "Sports"], "layout": "shared",
                            "task_loss_reduction": "mean_classes"})).data
    assert data.shape == "shared" and len(data.examples) == 90
    assert [t.weight for t in data.tasks] == [0.5, 0.5]
    flat = {v["id"].decode(): set(v["labels"].tolist()) for vs in videos for v in vs}
    for row, vid in enumerate(data.examples.ids):
        assert bool(data.examples.masks["news"][row]) == (4 in flat[vid])
        assert bool(data.examples.masks["sports"][row]) == (5 in flat[vid])


def test_drop_unseen_classes(shards):
    root, _ = shards
    data = build_data(_cfg({"path": str(root), "verticals": ["Sports"], "drop_unseen_classes": True})).data
    assert data.tasks[0].classes == [5] and data.examples["sports"].targets["sports"].shape[1] == 1
    assert data.meta["dropped_classes"] == {"sports": 1}


def test_custom_grouping(shards, tmp_path):
    root, _ = shards
    data = build_data(_cfg({"path": str(root), "grouping": {"left": [0, 2, 4], "right": [1, 3, 5]}})).data
    assert [t.name for t in data.tasks] == ["left", "right"] and data.tasks[0].classes == [0, 2, 4]
    (tmp_path / "g.csv").write_text("Index,task\n0,a\n1,a\n5,b\n")
    data = build_data(_cfg({"path": str(root), "grouping": str(tmp_path / "g.csv")})).data
    assert [(t.name, t.classes) for t in data.tasks] == [("a", [0, 1]), ("b", [5])]
    with pytest.raises(ConfigError, match="names class 9"):
        build_data(_cfg({"path": str(root), "grouping": {"a": [9]}}))


def test_bad_input_is_one_clear_line(shards, tmp_path):
    root, _ = shards
    with pytest.raises(ConfigError, match=r"unknown vertical 'Gamez'.*did you mean: Games"):
        build_data(_cfg({"path": str(root), "verticals": ["Gamez"]}))
    with pytest.raises(ConfigError, match=r"unknown vertical .Gamez."):
        build_data(_cfg({"path": str(root), "verticals": "Gamez"}))
    with pytest.raises(ConfigError, match="reference vertical 'Arts & Entertainment'|reference vertical"):
        build_data(_cfg({"path": str(root)}))  # the tiny vocabulary lacks most of the 16 verticals
    with pytest.raises(DataError, match="no file matches"):
        build_data(_cfg({"path": str(root / "nothing*.tfrecord"), "verticals": "all"}))
    with pytest.raises(DataError, match="file not found"):
        build_data(_cfg({"path": str(root / "missing.tfrecord"), "verticals": "all"}))
    with pytest.raises(DataError, match="data.vocabulary: file not found"):
        build_data(_cfg({"path": str(root), "verticals": "all", "vocabulary": str(tmp_path / "v.csv")}))
    with pytest.raises(ConfigError, match="unknown config key 'data.vertical'"):
        build_data(_cfg({"path": str(root), "vertical": "all"}))
    with pytest.raises(ConfigError, match="remove the tasks section"):
        build_data(_cfg({"path": str(root), "verticals": "all"}, tasks=[{"name": "x", "kind": "multilabel"}]))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Youtube-8M sample not present")
def test_shipped_sample_gives_the_16_reference_tasks():
    from sharewise.data.yt8m import REFERENCE_VERTICALS

    loaded = build_data(_cfg({"path": str(SAMPLE)}))
    data = loaded.data
    assert [len(t.classes) for t in data.tasks] == [c for _, c in REFERENCE_VERTICALS]
    assert sum(len(t.classes) for t in data.tasks) == 3557
    assert data.meta["videos_total"] == 2950
    assert loaded.state["groups"]["arts_entertainment"] == "Arts & Entertainment"
    assert sum(data.meta["videos"]["games"].values()) == len(data.examples["games"])


@pytest.mark.parametrize("method,backbone", [
    ("hard", {"name": "mlp", "width": 16, "depth": 1, "norm": "none"}),
    ("independent", {"name": "mlp", "width": 16, "depth": 1, "norm": "none"}),
    ("independent", {"name": "plain_mlp", "widths": [16, 16, 16]})], ids=["hard", "independent", "independent-plain"])
def test_tiny_run_writes_gap(shards, tmp_path, method, backbone):
    from sharewise import fit

    root, _ = shards
    cfg = {
        "data": {"source": "yt8m", "path": str(root), "verticals": ["Games", "Arts & Entertainment", "Sports"]},
        "backbone": backbone,
        "method": {"name": method},
        "train": {"epochs": 1, "max_steps": 3, "batch_size": 8, "threads": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    run = fit(cfg)
    results = json.loads((Path(run.path) / "results.json").read_text())
    for task in ("games", "arts_entertainment", "sports"):
        entry = results["tasks"][task]
        assert entry["kind"] == "multilabel" and entry["primary_metric"] == "gap_at_20"
        assert {"gap_at_20", "map_at_10", "hit_at_1"} <= set(entry["test"])
        assert 0.0 <= entry["test"]["gap_at_20"] <= 1.0


@pytest.mark.parametrize("method", ["hard", "independent", "taan", "cross_stitch", "mmoe", "soft_order"])
def test_configs_validate(method):
    from sharewise.config import load_config, validate_options
    from sharewise.methods import get_method

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "taan" / f"yt8m_{method}.yaml")
    assert cfg.data.source == "yt8m" and cfg.method.name == method
    if method in ("hard", "independent"):  # Hard3 / STL of §5.4: the plain MLP 1152→H→H→H
        assert cfg.backbone.name == "plain_mlp" and cfg.backbone.options == {"widths": [256, 256, 256]}
    else:  # the method builds its own trunk of method.widths
        opts = validate_options(get_method(method).Options, cfg.method.options, "method")
        assert opts.widths == [256, 256, 256]


def test_disk_cache_of_parsed_shards(shards, tmp_path, monkeypatch):
    from sharewise.data import yt8m

    root, _ = shards
    opts = {"path": str(root), "verticals": "all", "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    first = build_data(_cfg(opts)).data
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3

    def no_parse(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(yt8m, "_parse_shard", no_parse)
    second = build_data(_cfg(opts)).data
    for t in first.task_names:
        assert list(first.examples[t].ids) == list(second.examples[t].ids)
        assert torch.equal(first.examples[t].targets[t], second.examples[t].targets[t])
        idx = np.arange(len(first.examples[t]))
        assert torch.equal(first.examples[t].get_inputs(idx), second.examples[t].get_inputs(idx))


@pytest.mark.parametrize("setting,message", [
    ("data.verticals=[Gamez]", "unknown vertical 'Gamez'"),
    ("data.path=/nonexistent/x*.tfrecord", "no file matches"),
])
def test_cli_bad_input_is_one_line(shards, tmp_path, capsys, setting, message):
    from sharewise.cli.main import main

    root, _ = shards
    out = tmp_path / "run"
    rc = main(["train", "--data", str(root), "--set", "data.source=yt8m", "--set", setting, "--out", str(out),
               "--no-progress", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()


def test_file_wise_split_rejects_ratios_and_repeated_shards(shards):
    root, _ = shards
    files = sorted(root.glob("train*.tfrecord"))
    with pytest.raises(ConfigError, match="split.ratios: not used with data.files"):
        build_data(_cfg({"files": {"train": [str(files[0])]}, "verticals": "all"}, split={"ratios": [0.7, 0.15, 0.15]}))
    with pytest.raises(ConfigError, match="given twice"):
        build_data(_cfg({"files": {"train": [str(files[0])], "val": [str(files[0])]}, "verticals": "all"}))


@pytest.mark.parametrize("method,options", [
    ("taan", {"num_basis": 4, "regularizer": "distance", "c": 0.1}), ("cross_stitch", {}),
    ("mmoe", {"num_experts": 2}), ("soft_order", {"widths": [16, 16, 16]})])
def test_tiny_soft_sharing_run_lowers_the_loss(shards, tmp_path, method, options):
    """Each soft-sharing method end to end on a tiny TFRecord set (per-task layout: one
    ``forward_all_tasks`` call a step): results.json has every task's multilabel metrics and the
    training loss went down."""
    from sharewise import fit

    root, _ = shards
    cfg = {
        "data": {"source": "yt8m", "path": str(root), "verticals": ["Games", "Arts & Entertainment", "Sports"]},
        "method": {"name": method, "widths": [16, 16], **options},
        "optim": {"lr": 0.01},
        "train": {"epochs": 2, "max_steps": 24, "batch_size": 8, "threads": 1, "progress": False, "log_every": 4},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    run = fit(cfg)
    results = json.loads((Path(run.path) / "results.json").read_text())
    for task in ("games", "arts_entertainment", "sports"):
        entry = results["tasks"][task]
        assert {"gap_at_20", "map_at_10", "map_at_10_over_positives", "hit_at_1"} <= set(entry["test"])
        assert 0.0 <= entry["test"]["gap_at_20"] <= 1.0
    rows = [json.loads(line) for line in (Path(run.path) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/total"] for r in rows if r.get("loss/total") is not None]  # running means, every 4 steps
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_taan_run_reports_similarity_heatmaps_and_activation_curves(shards, tmp_path):
    # spec §2.3: per TAL layer the T×T distance and cosine matrices (plotted, grouped) and f_t on [−3, 3]
    from sharewise import fit

    root, _ = shards
    run = fit({"data": {"source": "yt8m", "path": str(root), "verticals": "all"},
               "method": {"name": "taan", "widths": [8, 8], "num_basis": 4, "regularizer": "distance"},
               "train": {"epochs": 1, "max_steps": 3, "batch_size": 8, "threads": 1},
               "output": {"dir": str(tmp_path / "run"), "tensorboard": False}})
    out = Path(run.path)
    results = json.loads((out / "results.json").read_text())
    tasks = results["task_order"]
    assert len(tasks) == 4 and len(results["tal_layers"]) == 2
    for layer in results["tal_layers"]:
        d, c = np.array(layer["distance"]), np.array(layer["cosine"])
        assert d.shape == c.shape == (4, 4)
        np.testing.assert_allclose(np.diag(d), 0, atol=1e-9)
        np.testing.assert_allclose(np.diag(c), 1, atol=1e-6)
        z, f = np.array(layer["curves"]["z"]), np.array(layer["curves"]["f"])
        assert z[0] == -3 and z[-1] == 3 and f.shape == (4, len(z))
        np.testing.assert_allclose(f[:, z > 1], np.broadcast_to(z[z > 1], (4, (z > 1).sum())), rtol=1e-6)  # identity above the hinges
    report = (out / "report.md").read_text()
    assert "## TAAN: task-adaptive activations" in report
    for name in ("taan_similarity_layer1.png", "taan_similarity_layer2.png", "taan_activations.png"):
        assert f"(plots/{name})" in report and (out / "plots" / name).stat().st_size > 1000


def test_spectral_groups_recover_block_structure():
    from sharewise.methods._taan_report import spectral_groups

    centres = np.array([0.0, 0.0, 5.0, 5.0, 5.0, 9.0, 9.0])  # three groups of activations, tasks interleaved
    order = np.array([2, 0, 5, 3, 1, 6, 4])
    x = centres[order] + np.linspace(0, 0.1, 7)
    distance = (x[:, None] - x[None, :]) ** 2
    groups = spectral_groups(distance)
    assert groups.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert spectral_groups(distance[:3, :3]) is None  # 3 tasks: nothing to group
    assert spectral_groups(np.zeros((5, 5))) is None  # equal activations
