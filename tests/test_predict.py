"""``predict`` for every kind of input (tables with joins, image folders, image-path tables, IDX,
volumes), through the CLI and ``Run.predict``; the exported model's ``predict`` on raw inputs and
its named, decoded ``torch.export`` outputs; the scikit-learn-style entry for tables."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import sharewise
from sharewise.cli.main import main
from sharewise.config import load_config
from sharewise.data import build_data
from sharewise.export import METADATA, load_exported

from test_images import make_folder, make_idx, make_table
from test_volumes import make_study

nib = pytest.importorskip("nibabel")
README = Path(__file__).resolve().parents[1] / "README.md"

COMMON = ["--epochs", "2", "--no-progress", "--set", "train.threads=1", "--set", "output.tensorboard=false"]
CONVNET = ["--backbone", "convnet", "--set", "backbone.widths=[4,8]"]


def _join_tables(root: Path) -> Path:
    """``main.csv`` (sid, x0, y, z) and ``other.csv`` (sid, x1, x2): the targets depend on the
    joined columns, so a predict that lost the join would be far from the test metrics."""
    rng = np.random.default_rng(0)
    n = 90
    x0, x1, x2 = rng.normal(size=(3, n))
    sid = [f"s{i:02d}" for i in range(n)]
    main_t = pd.DataFrame({"sid": sid, "x0": x0, "y": np.where(x1 + 0.2 * x0 > 0, "a", "b"), "z": 10 + 5 * x2})
    other = pd.DataFrame({"sid": sid[::-1], "x1": x1[::-1], "x2": x2[::-1]})  # another row order: joined on the key
    main_t.to_csv(root / "main.csv", index=False)
    other.to_csv(root / "other.csv", index=False)
    return root / "main.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny finished run per kind of input, and the truth of every example."""
    root = tmp_path_factory.mktemp("predict")
    out = {}
    # an image folder: the class is the saturated channel
    make_folder(root / "pets")
    assert main(["run", "--data", str(root / "pets"), "--out", str(root / "r_folder"), "--set", "data.image_size=[8,8]",
                 *CONVNET, *COMMON]) == 0
    out["folder"] = (root / "r_folder", root / "pets")
    # an image-path table: size (categorical) and weight (numerical)
    (root / "t").mkdir()
    labels = make_table(root / "t")
    pd.read_csv(labels).iloc[:30].to_csv(labels, index=False)
    assert main(["run", "--data", str(labels), "--image-col", "file", "--cat-target", "size", "--num-target", "weight",
                 "--out", str(root / "r_table"), *CONVNET, *COMMON]) == 0
    out["image_table"] = (root / "r_table", labels)
    # IDX
    make_idx(root / "idx", n_train=120, n_test=40)
    assert main(["run", "--data", str(root / "idx"), "--out", str(root / "r_idx"), *CONVNET, *COMMON]) == 0
    out["idx"] = (root / "r_idx", root / "idx")
    # volumes: phenotype table + pattern
    study = make_study(root / "s", n=20)
    assert main(["run", "--data", str(study), "--set", "data.source=volumes", "--id-col", "MRID",
                 "--set", "data.volume_pattern=t1/{id}-*_T1.nii.gz", "--set", "data.volume_shape=[8,8,8]",
                 "--cat-target", "Sex", "--num-target", "Age", "--backbone", "resnet3d", "--set", "backbone.depth=10",
                 "--set", "backbone.width=2", "--out", str(root / "r_vol"), *COMMON]) == 0
    out["volumes"] = (root / "r_vol", study)
    # a table with data.join
    (root / "j").mkdir()
    main_csv = _join_tables(root / "j")
    assert main(["run", "--data", str(main_csv), "--cat-target", "y", "--num-target", "z", "--id-col", "sid",
                 "--set", f"data.join={{path: {root / 'j' / 'other.csv'}, on: sid}}", "--set", "backbone.width=16",
                 "--set", "backbone.depth=1", "--out", str(root / "r_join"), *COMMON]) == 0
    out["join"] = (root / "r_join", main_csv)
    return out


def _truth(kind: str, data: Path) -> pd.DataFrame:
    """Every example's targets, indexed by the id its predictions carry."""
    if kind == "folder":
        files = sorted(p for p in data.rglob("*") if p.suffix in (".png", ".jpg"))
        ids = [p.relative_to(data).as_posix() for p in files]
        return pd.DataFrame({"label": [i.split("/")[0] for i in ids]}, index=ids)
    if kind == "idx":
        from sharewise.data.idx import read_idx

        labels = read_idx(data / "t10k-labels-idx1-ubyte")
        return pd.DataFrame({"label": labels}, index=[f"test/{i}" for i in range(len(labels))])
    key = {"image_table": "file", "volumes": "MRID", "join": "sid"}[kind]
    return pd.read_csv(data).set_index(key)


def _test_ids(run_dir: Path) -> list[str]:
    split = pd.read_csv(run_dir / "split.csv", dtype={"id": str})
    return split.loc[split["split"] == "test", "id"].tolist()


@pytest.mark.parametrize("kind", ["folder", "image_table", "idx", "volumes", "join"])
def test_predict_on_raw_data_reproduces_the_test_metrics(runs, kind, tmp_path):
    """The CLI's predictions on the raw data (the same folder, table or files the run was trained
    on), restricted to the test split, give exactly the recorded test metrics: the run's
    preprocessing, joins and decoding are applied as in training."""
    run_dir, data = runs[kind]
    pred_file = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), "--data", str(data), "--out", str(pred_file)]) == 0
    pred = pd.read_csv(pred_file)
    key = pred.columns[0]
    pred[key] = pred[key].astype(str)
    pred = pred.set_index(key)
    truth = _truth(kind, data)
    truth.index = truth.index.astype(str)
    assert len(pred) == len(truth) and set(pred.index) == set(truth.index)  # every example, ids kept
    ids = _test_ids(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    # per example, the model's outputs on the inputs the training pipeline builds for the test rows
    run = sharewise.load_run(run_dir)
    examples = build_data(load_config(run_dir / "config.yaml")).data.examples
    position = {str(v): k for k, v in enumerate(examples.ids)}
    with torch.no_grad():
        outputs = run.model(examples.get_inputs(np.array([position[i] for i in ids])))
    for task in run.tasks:
        expected = task.predict(outputs[task.name])
        columns = [f"{task.name}:p[{c}]" for c in task.classes] if task.kind == "categorical" else [task.name]
        got = pred.loc[ids, columns].to_numpy(float)
        assert np.allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-6), task.name
    assert ids and len(ids) == results["run"]["split_sizes"]["test"]
    for task, entry in results["tasks"].items():
        y, p = truth.loc[ids, task], pred.loc[ids, task]
        known = y.notna().to_numpy()
        if entry["kind"] == "categorical":
            acc = np.mean(p.astype(str).to_numpy()[known] == y.astype(str).to_numpy()[known])
            assert acc == pytest.approx(entry["test"]["accuracy"], abs=1e-9), task
            prob_cols = [c for c in pred.columns if c.startswith(f"{task}:p[")]
            classes = [c[len(task) + 3:-1] for c in prob_cols]
            probs = pred.loc[ids, prob_cols].to_numpy()
            assert np.allclose(probs.sum(1), 1, atol=1e-5)
            assert list(p.astype(str)) == [classes[k] for k in probs.argmax(1)]  # the label is the likeliest class
        else:
            mae = np.mean(np.abs(p.to_numpy()[known] - y.to_numpy()[known]))
            assert mae == pytest.approx(entry["test"]["mae"], rel=1e-5), task


def test_run_predict_takes_frames_files_and_in_memory_images_and_volumes(runs):
    """``Run.predict`` gives the same numbers whatever form the raw inputs take."""
    from PIL import Image

    run_dir, labels = runs["image_table"]
    run = sharewise.load_run(run_dir)
    by_table = run.predict(labels)
    frame = pd.read_csv(labels)
    assert by_table.equals(run.predict(frame, root=labels.parent))  # a DataFrame, paths relative to root
    paths = [str(labels.parent / f) for f in frame["file"]]
    by_path = run.predict(paths[:4])
    by_pil = run.predict([Image.open(p) for p in paths[:4]])
    by_array = run.predict(np.stack([np.asarray(Image.open(p)) for p in paths[:4]]))  # a stack (N, H, W)
    cols = ["size", "size:p[big]", "size:p[small]", "weight"]
    for other in (by_pil, by_array):
        assert np.allclose(other[cols[1:]].to_numpy(float), by_path[cols[1:]].to_numpy(float), atol=1e-6)
    assert np.allclose(by_path[cols[1:]].to_numpy(float), by_table[cols[1:]].iloc[:4].to_numpy(float), atol=1e-6)
    assert list(by_path["image"]) == paths[:4]

    run_dir, study = runs["volumes"]
    run = sharewise.load_run(run_dir)
    table = run.predict(study)
    files = sorted((study.parent / "t1").glob("*.nii.gz"))
    by_folder = run.predict(study.parent / "t1")
    assert list(by_folder["id"]) == [f.name for f in files]
    by_image = run.predict([nib.load(str(f)) for f in files[:3]])
    by_array = run.predict([np.asarray(nib.as_closest_canonical(nib.load(str(f))).get_fdata()) for f in files[:3]])
    for other in (by_folder.iloc[:3], by_image, by_array):
        assert np.allclose(other[["Sex:p[F]", "Age"]].to_numpy(float), table[["Sex:p[F]", "Age"]].iloc[:3].to_numpy(float),
                           atol=1e-5)


def test_predict_redoes_the_join_and_moves_its_table(runs, tmp_path, capsys):
    run_dir, main_csv = runs["join"]
    run = sharewise.load_run(run_dir)
    expected = run.predict(main_csv)
    # a frame that already holds the joined columns is taken as it is
    joined = pd.read_csv(main_csv).merge(pd.read_csv(main_csv.parent / "other.csv"), on="sid")
    assert np.allclose(run.predict(joined)["z"], expected["z"])
    # the joined table moved: one line naming it and the flag that moves it
    moved = tmp_path / "elsewhere" / "regions.csv"
    moved.parent.mkdir()
    shutil.move(main_csv.parent / "other.csv", moved)
    try:
        rc = main(["predict", str(run_dir), "--data", str(main_csv), "--out", str(tmp_path / "p.csv")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "other.csv is not found" in err[0] and "--join-data" in err[0]
        assert not (tmp_path / "p.csv").exists()
        assert main(["predict", str(run_dir), "--data", str(main_csv), "--join-data", str(moved),
                     "--out", str(tmp_path / "p.csv")]) == 0
        assert np.allclose(pd.read_csv(tmp_path / "p.csv")["z"], expected["z"])
        rc = main(["predict", str(run_dir), "--data", str(main_csv), "--join-data", str(moved), str(moved),
                   "--out", str(tmp_path / "p2.csv")])
        assert rc == 2 and "2 path(s) given for the run's 1 data.join table(s)" in capsys.readouterr().err
    finally:
        shutil.move(moved, main_csv.parent / "other.csv")


@pytest.mark.parametrize("args, message", [
    (["--data", "{pets}/cat/img0.png", "--image-col", "file"], "--image-col): only for a table of image paths"),
    (["--data", "{root}/t/labels.csv", "--image-col", "fil"], "unknown image column 'fil'"),
    (["--data", "{root}/nowhere"], "data not found"),
    (["--data", "{root}/t/imgs/corrupt.png"], "corrupt.png: "),
])
def test_predict_bad_input_is_one_line(runs, tmp_path, capsys, args, message):
    run_dir = runs["folder"][0] if "--image-col" in args and "png" in args[1] else runs["image_table"][0]
    root = runs["folder"][1].parent
    args = [a.format(pets=runs["folder"][1], root=root) for a in args]
    rc = main(["predict", str(run_dir), *args, "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p.csv").exists()


def test_volume_rows_without_a_volume_are_counted_and_left_out(runs, tmp_path):
    run_dir, study = runs["volumes"]
    frame = pd.read_csv(study)
    frame.loc[len(frame)] = {"MRID": "IXI999", "Age": 30, "Sex": "F", "site": "HH"}
    frame.to_csv(tmp_path / "new.csv", index=False)
    with pytest.warns(UserWarning, match=r"1 of 21 row\(s\) have no volume .*'IXI999'"):
        pred = sharewise.load_run(run_dir).predict(tmp_path / "new.csv", root=study.parent)
    assert list(pred["MRID"]) == list(frame["MRID"][:-1])


def test_predict_gives_each_task_its_view(tmp_path):
    """Per-task IDX views: each task's input turned as in training (a rotated task fed the upright
    images would give other probabilities)."""
    make_idx(tmp_path / "idx", n_train=120, n_test=40)
    out = tmp_path / "r"
    assert main(["run", "--data", str(tmp_path / "idx"), "--set", "data.task_views={plain: {}, rot: {rot90: 1}}",
                 "--set", "tasks=[{name: plain, kind: categorical}, {name: rot, kind: categorical}]",
                 *CONVNET, *COMMON, "--out", str(out)]) == 0
    run = sharewise.load_run(out)
    pred = run.predict(tmp_path / "idx").set_index("id")
    data = build_data(load_config(out / "config.yaml")).data
    rows = data.splits["rot"]["test"]
    ids = [str(i) for i in data.examples["rot"].ids[rows]]
    for task, view in (("plain", "plain"), ("rot", "rot"), ("rot", "plain")):
        t = next(t for t in run.tasks if t.name == task)
        with torch.no_grad():
            expected = t.predict(run.model(data.examples[view].get_inputs(rows), tasks=[task])[task])
        got = pred.loc[ids, [f"{task}:p[{c}]" for c in t.classes]].to_numpy()
        assert np.allclose(got, expected, atol=1e-6) == (task == view), (task, view)


def test_predict_refuses_a_source_it_does_not_read():
    from sharewise.config import validate_config
    from sharewise.data.inference import input_pipeline

    with pytest.raises(sharewise.DataError, match="runs/x: predict takes runs trained on tables, images or volumes; "
                                                  "this run's data is yt8m"):
        input_pipeline({"kind": "yt8m", "source": "yt8m"}, validate_config({}), what="runs/x")


# ----------------------------------------------------------------- export


@pytest.mark.parametrize("kind", ["join", "folder", "volumes"])
def test_export_round_trips_raw_inputs(runs, kind, tmp_path):
    """The exported file alone predicts from raw inputs what the run predicts; the ``.pt2``
    program returns ``{task: decoded tensor}`` as its metadata documents."""
    run_dir, data = runs[kind]
    model_file = tmp_path / "model.pt"
    assert main(["export", str(run_dir), "--out", str(model_file)]) == 0
    shutil.copytree(run_dir, tmp_path / "gone")
    shutil.rmtree(run_dir)  # the export must not need the run directory
    try:
        exported = load_exported(model_file)
        raw = pd.read_csv(data) if kind == "join" else data
        mine = exported.predict(raw)
    finally:
        shutil.copytree(tmp_path / "gone", run_dir)
    theirs = sharewise.load_run(run_dir).predict(data)
    pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True))
    # the program: named outputs, decoded; the description inside it
    extra = {METADATA: ""}
    program = torch.export.load(model_file.with_suffix(".pt2"), extra_files=extra).module()
    meta = json.loads(extra[METADATA])
    assert meta["data_state"]["kind"] == {"join": "table", "folder": "images", "volumes": "volumes"}[kind]
    assert meta["preprocessing"]["steps"] and set(meta["outputs"]) == set(exported.task_names)
    inputs = exported.inputs
    examples = inputs.locate(raw)
    x = inputs.batch(examples, np.arange(min(5, len(examples))))
    with torch.no_grad():
        out, logits = program(x), exported(x)
    assert isinstance(out, dict) and list(out) == exported.task_names
    for task in exported.tasks:
        decoding = meta["outputs"][task.name]
        if task.kind == "categorical":
            labels = np.array(decoding["classes"], dtype=object)[out[task.name].argmax(1).numpy()]
            assert [str(v) for v in labels] == [str(v) for v in mine[task.name].iloc[:len(x)]]
            assert np.allclose(out[task.name].sum(1).numpy(), 1, atol=1e-5)
        else:
            assert out[task.name].shape == (len(x),)
            assert np.allclose(out[task.name].numpy(), mine[task.name].iloc[:len(x)].to_numpy(float), rtol=1e-5)
            assert torch.allclose(out[task.name], logits[task.name][:, 0] * decoding["std"] + decoding["mean"], rtol=1e-5)


# ----------------------------------------------------------------- the scikit-learn-style entry


def test_fit_a_dataframe_then_predict_proba_and_score(tmp_path, people_csv):
    frame = pd.read_csv(people_csv)
    config = {"backbone": {"width": 16, "depth": 1}, "train": {"epochs": 3, "progress": False, "threads": 1},
              "output": {"tensorboard": False}}
    run = sharewise.fit(frame, cat_target="sex", num_target=["age"], id_col="subject", config=config,
                        out=tmp_path / "frame")
    # the same run from the file gives the same numbers
    by_file = sharewise.fit(people_csv, cat_target="sex", num_target=["age"], id_col="subject", config=config,
                            out=tmp_path / "file")
    assert run.results["tasks"] == by_file.results["tasks"]
    assert run.config.data.path.startswith("dataframe:")
    new = frame.iloc[:50]
    pred = run.predict(new.drop(columns=["sex", "age"]))
    proba = run.predict_proba(new)
    assert set(proba) == {"sex"} and list(proba["sex"].columns) == ["F", "M"]
    assert np.allclose(proba["sex"].to_numpy(), pred[["sex:p[F]", "sex:p[M]"]].to_numpy())
    assert proba["sex"].index.equals(new.index)
    scores = run.score(new)
    known = new["sex"].notna().to_numpy()
    assert scores["sex"] == pytest.approx(np.mean(pred["sex"].to_numpy()[known] == new["sex"].to_numpy()[known]))
    a, p = new["age"].to_numpy(), pred["age"].to_numpy()
    k = ~np.isnan(a)
    r2 = 1 - np.sum((a[k] - p[k]) ** 2) / np.sum((a[k] - a[k].mean()) ** 2)
    assert scores["age"] == pytest.approx(r2, rel=1e-6)
    assert run.score(new.drop(columns=["age"]), new["age"], task="age") == pytest.approx(r2, rel=1e-6)
    with pytest.raises(sharewise.ConfigError, match="'age': numerical, not categorical"):
        run.predict_proba(new, task="age")
    with pytest.raises(sharewise.DataError, match="target column 'sex'"):
        run.score(new.drop(columns=["sex"]))
    # resuming the run with another frame is refused as a changed config
    with pytest.raises(sharewise.ConfigError, match="data.path: dataframe:"):
        sharewise.fit(frame.iloc[:200], cat_target="sex", num_target=["age"], id_col="subject", config=config,
                      out=tmp_path / "frame", resume=True)


def test_fit_rejects_what_is_not_data_or_config(tmp_path):
    with pytest.raises(sharewise.DataError, match="a pandas DataFrame or a path, not int"):
        sharewise.fit(3)
    with pytest.raises(sharewise.DataError, match="the DataFrame has no rows"):
        sharewise.fit(pd.DataFrame({"a": [], "b": []}), cat_target="a", out=tmp_path / "x")
    with pytest.raises(sharewise.ConfigError, match="given twice"):
        sharewise.fit({"data": {}}, config={"data": {}})


def test_readme_table_quickstart_in_python_runs(tmp_path, monkeypatch, capsys):
    """The README's scikit-learn-style example runs as written; ``score`` on the test rows gives
    the recorded test metrics, and the run learnt the cultivar."""
    from sklearn.datasets import load_wine

    block = re.search(r"### A table with several targets.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert "alcohol" in capsys.readouterr().out
    run = sharewise.load_run(tmp_path / "runs" / "wine")
    frame = load_wine(as_frame=True).frame
    split = pd.read_csv(run.path / "split.csv")
    test_rows = split.loc[split["split"] == "test", "id"].to_numpy()  # no id column: the row numbers
    scores = run.score(frame.iloc[test_rows])
    tasks = run.results["tasks"]
    assert scores["target"] == pytest.approx(tasks["target"]["test"]["accuracy"], abs=1e-9)
    assert scores["alcohol"] == pytest.approx(tasks["alcohol"]["test"]["r2"], rel=1e-4)
    assert scores["target"] >= 0.8  # three cultivars, the largest a third of the rows


def test_a_version_1_export_still_predicts_tables(runs, tmp_path):
    """Files written before the preprocessing travelled with them: tables (encoders) still predict."""
    run_dir, main_csv = runs["join"]
    model_file = tmp_path / "model.pt"
    assert main(["export", str(run_dir), "--out", str(model_file), "--no-program"]) == 0
    blob = torch.load(model_file, weights_only=True)
    description = json.loads(blob["description"])
    old = {k: v for k, v in description.items() if k not in ("data_state", "preprocessing", "outputs")}
    torch.save({"description": json.dumps({**old, "version": 1}), "state_dict": blob["state_dict"]}, tmp_path / "v1.pt")
    pd.testing.assert_frame_equal(load_exported(tmp_path / "v1.pt").predict(main_csv), load_exported(model_file).predict(main_csv))
