"""`ferlab report` on hand-made run directories whose numbers are known."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from ferlab.errors import FerlabError
from ferlab.search.report import build_parser, build_report, find_runs, main, run_report

# (overrides, val/acc at the best epoch, test/acc); three seeds of adam, two of sgd, one dropout run
RUNS = [
    (["optim=adam", "seed=1"], 0.50, 0.48),
    (["optim=adam", "seed=2"], 0.60, 0.58),
    (["optim=adam", "seed=3"], 0.70, 0.65),
    (["optim=sgd", "seed=1"], 0.80, 0.75),
    (["optim=sgd", "seed=2"], 0.84, 0.79),
    (["optim=sgd", "model.drop_rate=0.3", "seed=1"], 0.55, 0.50),
]


def _write_run(path: Path, overrides: list[str], val_acc: float, test_acc: float) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    history = [{"epoch": 0, "val/acc": val_acc / 2}, {"epoch": 1, "val/acc": val_acc}, {"epoch": 2, "val/acc": val_acc - 0.01}]
    metrics = {
        "best": {"monitor": "val/acc", "mode": "max", "score": val_acc, "epoch": 1},
        "best_epoch_metrics": {"val/acc": val_acc, "val/loss": 1 - val_acc, "train/acc": 0.99},
        "final": {"val/acc": val_acc - 0.01, "val/loss": 2.0},
        "test": {"test/acc": test_acc, "test/f1_macro": test_acc - 0.1, "test/f1/happy": 0.9},
        "epochs": 3, "wall_time_s": 12.5, "history": history,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for i, (overrides, val, test) in enumerate(RUNS):
        _write_run(root / str(i), overrides, val, test)
    failed = root / str(len(RUNS))
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- optim=sgd\n- seed=3\n")
    (failed / "failed.json").write_text(json.dumps({"type": "FerlabError", "message": "data.batch_size=0 (expected >= 1)"}))
    running = root / "99"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- optim=adamw\n- seed=1\n")
    return root


def _json(*args: str) -> dict:
    text, _ = run_report(build_parser().parse_args([*args, "--format", "json", "--no-write"]))
    return json.loads(text)


def test_mean_std_and_n_over_seeds_are_right(sweep):
    data = _json(str(sweep))
    assert data["swept"] == ["model.drop_rate", "optim", "seed"]
    rows = {(r["config"]["optim"], r["config"]["model.drop_rate"]): r for r in data["rows"]}
    adam = rows[("adam", None)]["metrics"]["val/acc"]
    assert adam["n"] == 3 and adam["mean"] == pytest.approx(0.6) and adam["std"] == pytest.approx(0.1)
    sgd = rows[("sgd", None)]["metrics"]["test/acc"]
    assert sgd["n"] == 2 and sgd["mean"] == pytest.approx(0.77)
    assert sgd["std"] == pytest.approx(statistics.stdev([0.75, 0.79])) == pytest.approx(0.02828427)
    single = rows[("sgd", "0.3")]["metrics"]["val/acc"]
    assert single["n"] == 1 and single["mean"] == 0.55 and single["std"] is None
    assert sorted(rows[("adam", None)]["seeds"]) == ["1", "2", "3"]


def test_rows_sorted_by_monitor_and_per_class_f1_left_out(sweep):
    data = _json(str(sweep))
    assert data["sort"] == "val/acc" and data["descending"]
    assert [r["config"]["optim"] for r in data["rows"]] == ["sgd", "adam", "sgd"]  # 0.82, 0.60, 0.55
    assert "test/f1/happy" not in data["rows"][0]["metrics"] and "train/acc" not in data["rows"][0]["metrics"]
    assert data["rows"][0]["metrics"]["val/loss"]["values"] == pytest.approx([0.2, 0.16])  # best epoch, not final
    by_loss = _json(str(sweep), "--sort", "val/loss")
    assert not by_loss["descending"] and by_loss["rows"][0]["config"]["optim"] == "sgd"


def test_failed_and_unfinished_runs_are_listed_with_their_error(sweep):
    data = _json(str(sweep))
    (failed,) = data["failed"]
    assert failed["error"] == "FerlabError: data.batch_size=0 (expected >= 1)" and failed["overrides"]["seed"] == "3"
    (running,) = data["incomplete"]
    assert running["run"].endswith("99") and "metrics.json" in running["error"]


def test_markdown_table_and_report_md_in_the_sweep_dir(sweep, capsys):
    main([str(sweep)])
    out = capsys.readouterr().out
    assert (sweep / "report.md").read_text() == out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0] == "| model.drop_rate | optim | n | val/acc | val/loss | test/acc | test/f1_macro |"
    assert lines[1] == "| (default) | sgd | 2 | 0.8200 ± 0.0283 | 0.1800 ± 0.0283 | 0.7700 ± 0.0283 | 0.6700 ± 0.0283 |"
    assert lines[2].startswith("| (default) | adam | 3 | 0.6000 ± 0.1000 |") and lines[3].startswith("| 0.3 | sgd | 1 | 0.5500 |")
    assert "data.batch_size=0 (expected >= 1)" in out and "### Unfinished runs" in out


def test_csv_has_a_row_per_configuration_and_per_failure(sweep):
    text, _ = run_report(build_parser().parse_args([str(sweep), "--format", "csv", "--no-write"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "incomplete"]
    assert float(rows[1]["val/acc"]) == pytest.approx(0.6) and float(rows[1]["val/acc_std"]) == pytest.approx(0.1)
    assert rows[2]["val/acc_std"] == "" and "batch_size=0" in rows[3]["error"]


def test_plots_are_written(sweep):
    _, written = run_report(build_parser().parse_args([str(sweep), "--plot", "--metrics", "val/acc", "test/acc"]))
    names = sorted(p.name for p in written)
    assert names == ["report.md", "val_acc_bars.png", "val_acc_curves.png"]
    for p in written[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_several_dirs_combine_and_write_only_with_out(sweep, tmp_path):
    other = tmp_path / "other" / "run"
    _write_run(other, ["optim=adamw", "seed=1"], 0.9, 0.88)
    text, written = run_report(build_parser().parse_args([str(sweep), str(tmp_path / "other"), "--format", "json"]))
    assert written == [] and json.loads(text)["rows"][0]["config"]["optim"] == "adamw"
    _, written = run_report(build_parser().parse_args([str(sweep), str(other), "--out", str(tmp_path / "tbl")]))
    assert written == [tmp_path / "tbl" / "report.md"]


def test_a_single_run_dir_is_a_one_row_table(sweep):
    data = _json(str(sweep / "0"))
    assert data["swept"] == [] and data["rows"][0]["n"] == 1 and data["rows"][0]["metrics"]["test/acc"]["mean"] == 0.48


def test_user_mistakes_are_one_line_errors(tmp_path, sweep, capsys):
    with pytest.raises(FerlabError, match="no runs under"):
        build_report(find_runs([tmp_path / "sweep" / "0" / ".hydra"]), [tmp_path])
    for args in ([str(tmp_path / "missing")], [str(sweep), "--sort", "val/nope"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and err.startswith("ferlab: error:") and "\n" not in err


def test_eval_and_predict_runs_are_not_rows(sweep):
    """An eval run saved beside the train runs (its config has no trainer) is neither a row nor unfinished."""
    other = sweep / "eval_run"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "overrides.yaml").write_text("- ckpt_path=x.ckpt\n")
    (other / ".hydra" / "config.yaml").write_text("task_name: eval\nckpt_path: x.ckpt\nsplit: test\n")
    runs = find_runs([sweep])
    assert len(runs) == len(RUNS) + 2 and all(r.path.name != "eval_run" for r in runs)
