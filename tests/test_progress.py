"""The progress bar's rendering (pure functions of the numbers and the width) and the summary
line each phase leaves."""

import io
import json

import pytest

from sharewise.engine.progress import (PhaseProgress, format_duration, render_bar, render_summary,
                                       validation_text)


def test_bar_line_exactly():
    line = render_bar("train", 270, 600, 12.0, ["val digit acc 0.944", "loss 0.512"], 80)
    # 45 % of 16 cells is 7 full cells and one eighth; 330 steps left at 12 s / 270 steps: 14.7 s
    assert line == "train  45% ███████▏         270/600 0:12<0:15 | val digit acc 0.944 | loss 0.512"
    assert len(line) == 80
    ascii_line = render_bar("train", 270, 600, 12.0, ["val digit acc 0.944", "loss 0.512"], 80, unicode=False)
    assert ascii_line == "train  45% #######          270/600 0:12<0:15 | val digit acc 0.944 | loss 0.512"
    # 40 columns more: the bar takes 24 of them (40 cells at most), the line the rest
    wide = render_bar("train", 270, 600, 12.0, ["val digit acc 0.944", "loss 0.512"], 120)
    assert wide == "train  45% " + "█" * 18 + " " * 22 + " 270/600 0:12<0:15 | val digit acc 0.944 | loss 0.512"


@pytest.mark.parametrize("width", [20, 33, 45, 60, 80, 100, 101, 137, 200, 400])
def test_bar_uses_the_width_it_is_given(width):
    fields = ["val " + ", ".join(f"task{i} acc 0.{i}41" for i in range(12)), "loss 1.25"]  # 211 characters
    line = render_bar("search", 30, 600, 3.0, fields, width)
    whole = render_bar("search", 30, 600, 3.0, fields, 10_000)  # 40 cells, nothing cut: 294 characters
    assert len(whole) == 294 and not whole.endswith("…")
    if width < len(whole):  # filled to the last column, never beyond (no cut at 100 columns)
        assert len(line) == width and line.endswith("…")
    else:
        assert line == whole
    assert line.startswith("search   5%")
    short = render_bar("search", 30, 600, 3.0, ["loss 1.25"], width)
    assert len(short) <= width
    if width >= 60:  # room for the bar: it grows with the width, 10 to 40 cells
        cells = len(short.split(" 30/600")[0]) - len("search   5% ")
        assert cells == max(10, min(40, width - len("search   5%") - 1 - len("30/600 0:03<0:57") - 1 - len(" | loss 1.25")))
        assert short.endswith("30/600 0:03<0:57 | loss 1.25")


def test_bar_of_a_resumed_phase_and_without_a_total():
    # resumed at step 500: 100 steps in 10 s, 400 left -> 40 s (not 10 s / 600 steps)
    assert "600/1000 0:10<0:40" in render_bar("train", 600, 1000, 10.0, [], 80, start_step=500)
    assert render_bar("train", 17, None, 75.0, ["loss 2"], 80) == "train 17 1:15 | loss 2"


def test_texts():
    val = {"digit": {"accuracy": 0.94444, "loss": 0.2}, "value": {"mae": 12.3456}, "tags": {"gap_at_20": float("nan")}}
    primary = {"digit": "accuracy", "value": "mae", "tags": "gap_at_20", "absent": "accuracy"}
    assert validation_text(val, primary) == "val digit acc 0.9444, value MAE 12.35, tags GAP@20 –"
    assert format_duration(3725) == "1:02:05" and format_duration(59.6) == "1:00" and format_duration(float("nan")) == "?"
    assert render_summary("arch_0/retrain", 320, 61, ["selected (step 300, cycle 0): val a acc 1", "", "loss 0.1"]) == \
        "arch_0/retrain: 320 steps in 1:01 | selected (step 300, cycle 0): val a acc 1 | loss 0.1"
    assert render_summary("train", 5, 1, ["x" * 100], width=30) == "train: 5 steps in 0:01 | xxxx…"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_phase_progress_draws_throttled_and_leaves_one_summary_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "121")
    now = [100.0]
    stream = _Terminal()
    bar = PhaseProgress("train", 10, primary={"a": "accuracy"}, stream=stream, min_interval=0.2, clock=lambda: now[0])
    for _ in range(3):  # within 0.2 s: drawn once
        now[0] += 0.05
        bar.update(1, loss=2.0)
    assert stream.getvalue().count("\r") == 1
    now[0] += 0.5
    bar.update(1, loss=1.0)
    assert stream.getvalue().count("\r") == 2
    bar.set_validation({"a": {"accuracy": 0.75}}, selected=True, cycle=1)  # drawn at once
    drawn = stream.getvalue().split("\r")[-1]
    assert drawn.startswith("train  40% ") and drawn.endswith("4/10 0:01<0:01 | val a acc 0.75 | loss 1.75\x1b[K")
    assert len(drawn) - len("\x1b[K") <= 120
    now[0] += 1
    bar.set_validation({"a": {"accuracy": 0.5}}, selected=False, cycle=2)  # worse: the selection keeps step 4
    text = bar.close("stopped early")
    assert text == "train: 4 steps in 0:02 | selected (step 4, cycle 1): val a acc 0.75 | stopped early | loss 1.75"
    assert stream.getvalue().endswith("\r\x1b[K" + text + "\n")


def test_without_a_terminal_only_the_summary_is_written():
    stream = io.StringIO()
    bar = PhaseProgress("warmup", 4, primary={"a": "mae"}, stream=stream)
    for _ in range(4):
        bar.update(1, loss=3.0)
    bar.set_validation({"a": {"mae": 1.5}})
    assert stream.getvalue() == ""
    bar.close()
    assert stream.getvalue() == "warmup: 4 steps in 0:00 | last val a MAE 1.5 | loss 3\n"


def test_a_run_leaves_one_line_per_phase_with_the_selected_evaluation(tmp_path, capsys):
    from sharewise.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--epochs", "4", "--set", "backbone.width=16", "--set", "backbone.depth=1",
                 "--set", "train.threads=1", "--set", "output.tensorboard=false", "--cat-target", "digit",
                 "--num-target", "value"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train: ")]
    assert len(lines) == 1
    selection = json.loads((out / "selection.json").read_text())
    phase = selection["phases"][0]
    evaluations = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    chosen = next(r for r in evaluations if r.get("split") == "val" and r["cycle"] == phase["best_cycle"])
    assert lines[0].startswith(f"train: {phase['steps']} steps in ")
    assert (f"selected (step {chosen['step']}, cycle {phase['best_cycle']}): val digit acc "
            f"{chosen['digit/accuracy']:.4g}, value MAE {chosen['value/mae']:.4g} | loss ") in lines[0]
