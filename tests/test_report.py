"""``sharewise report``: a comparison writes under --out only, with Δ_MTL against a reference."""

import json
import re

import pytest

from sharewise.cli.main import main


def _run(root, name, *extra):
    out = root / name
    assert main(["run", "--out", str(out), "--no-progress", "--epochs", "2", "--set", "backbone.width=16",
                 "--set", "backbone.depth=1", "--set", "output.tensorboard=false", "--set", "train.threads=1",
                 *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"independent": _run(root, "ind", "--method", "independent"),
            "hard": _run(root, "hard", "--method", "hard"),
            "hard_seed1": _run(root, "hard1", "--method", "hard", "--seed", "1")}


def _snapshot(*dirs):
    return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def _row(text, first, second=""):
    """The cells of the comparison row that starts ``| first | second |``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first} | {second}"))
    return [c.strip() for c in line.strip("|").split("|")][2:]


def _expected_delta_mtl(result, reference):
    deltas = []
    for t, e in result["tasks"].items():
        m = e["primary_metric"]
        b = reference["tasks"][t]["test"][m]
        deltas.append((1 if m != "mae" else -1) * (e["test"][m] - b) / abs(b))
    return 100 * sum(deltas) / len(deltas), deltas


def test_comparison_writes_only_under_out_with_delta_against_independent(runs, tmp_path):
    ind, hard = runs["independent"], runs["hard"]
    before = _snapshot(ind, hard)
    out = tmp_path / "cmp"
    assert main(["report", str(hard), str(ind), "--out", str(out)]) == 0
    assert _snapshot(ind, hard) == before  # not a byte of either run changed, nothing added
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_cost.png", "comparison.md"]
    text = (out / "comparison.md").read_text()
    r_hard, r_ind = (json.loads((d / "results.json").read_text()) for d in (hard, ind))
    assert r_hard["delta_mtl"] is None  # trained without --reference: the comparison computes it
    expected, deltas = _expected_delta_mtl(r_hard, r_ind)
    cells = _row(text, "Δ_MTL (%)")
    assert cells[1] == "reference" and float(cells[0]) == pytest.approx(expected, rel=1e-3)
    for (task, entry), d in zip(r_hard["tasks"].items(), deltas):
        assert float(_row(text, "Δ_t (%)", task)[0]) == pytest.approx(100 * d, rel=1e-3, abs=1e-4)
    assert f"against `{ind}`" in text


def test_reference_option_names_the_reference(runs, tmp_path):
    ind, hard, other = runs["independent"], runs["hard"], runs["hard_seed1"]
    out = tmp_path / "cmp"
    assert main(["report", str(ind), str(hard), str(other), "--out", str(out), "--reference", str(other)]) == 0
    text = (out / "comparison.md").read_text()
    cells = _row(text, "Δ_MTL (%)")
    r = {k: json.loads((d / "results.json").read_text()) for k, d in runs.items()}
    assert cells[2] == "reference"
    assert float(cells[0]) == pytest.approx(_expected_delta_mtl(r["independent"], r["hard_seed1"])[0], rel=1e-3)
    assert float(cells[1]) == pytest.approx(_expected_delta_mtl(r["hard"], r["hard_seed1"])[0], rel=1e-3)


def test_without_a_reference_the_recorded_delta_is_shown(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["report", str(runs["hard"]), str(runs["hard_seed1"]), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert _row(text, "Δ_MTL (%)", "as recorded") == ["–", "–"] and "Δ_t (%)" not in text


def test_two_independent_runs_need_a_reference(runs, tmp_path, capsys):
    import shutil

    out, twin = tmp_path / "cmp", tmp_path / "ind2"
    shutil.copytree(runs["independent"], twin)
    assert main(["report", str(runs["independent"]), str(twin), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reference" in err and not out.exists()
    assert main(["report", str(runs["independent"]), str(twin), "--out", str(out), "--reference", str(twin)]) == 0
    assert _row((out / "comparison.md").read_text(), "Δ_MTL (%)") == ["0", "reference"]
    assert main(["report", str(runs["hard"]), str(runs["hard"]), "--out", str(tmp_path / "x")]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_single_run_report_under_out_leaves_the_run_alone(runs, tmp_path):
    hard = runs["hard"]
    before = _snapshot(hard)
    out = tmp_path / "rep"
    assert main(["report", str(hard), "--out", str(out)]) == 0
    assert _snapshot(hard) == before
    text = (out / "report.md").read_text()
    assert text == (hard / "report.md").read_text()  # the same report, written elsewhere
    assert all((out / link).exists() for link in re.findall(r"\]\((plots/[^)]+)\)", text))
