"""The `ferlab` command as users run it: help, config printing, errors, multirun, unique run dirs."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, run_cli

TINY = ["data.source.num_images=300", "model.width=8", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
        "callbacks.rich_progress_bar=null", "logger=none"]


def test_top_level_help_lists_subcommands(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and "train" in r.stdout and "commands:" in r.stdout


def test_unknown_subcommand_is_one_line_error(tmp_path):
    r = run_cli("trian", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown command 'trian'" in r.stderr


def test_help_and_cfg_do_not_import_torch_or_lightning():
    code = (
        "import sys\n"
        "from ferlab.cli import main\n"
        "for args in (['train', '--help'], ['train', '--cfg', 'job'], ['train', 'model=nope']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_train_help_shows_config_groups(tmp_path):
    r = run_cli("train", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for group in ("data:", "model:", "optim:", "sched:", "trainer:", "augment:", "loss:", "logger:"):
        assert group in r.stdout


def test_cfg_job_prints_resolved_classes(tmp_path):
    r = run_cli("train", "--cfg", "job", "--resolve", cwd=tmp_path)
    assert r.returncode == 0
    assert "num_classes: 7" in r.stdout and "- disgust" in r.stdout


def test_unknown_override_fails_with_hydras_message(tmp_path):
    r = run_cli("train", "model=nope", cwd=tmp_path)
    assert r.returncode != 0 and "Could not find 'model/nope'" in r.stderr
    r = run_cli("train", "trainer.no_such_key=1", cwd=tmp_path)
    assert r.returncode != 0 and "no_such_key" in r.stderr


def test_two_run_modes_at_once_are_one_line(tmp_path):
    out = run_cli("train", "-m", "seed=1,2", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "ferlab train: error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"]


def test_an_unquoted_non_ascii_path_gets_the_quoted_form_to_type(tmp_path):
    r = run_cli("train", "data=fer5", "data.source.root=/data/数据 集/fer5", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("ferlab train: error: cannot parse the override")
    assert r.stderr.rstrip().endswith("""type it as 'data.source.root="/data/数据 集/fer5"'""")
    from ferlab.cli import quoting_hint

    assert quoting_hint(["-m", "data.source.root=/数据/a,/数据/b"]).endswith("""'data.source.root="/数据/a","/数据/b"'""")
    assert quoting_hint(["data.source.root=/data/my data/fer5", "+x=1"]) is None  # Hydra parses these as they are


def test_missing_csv_is_one_clear_line(ferlab_cli, tmp_path):
    r = ferlab_cli("train", "data=fer2013", f"data.source.csv_path={tmp_path}/missing.csv", *TINY[1:],
                   cwd=tmp_path).result(300)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("ferlab: error:")]
    assert len(errors) == 1 and "missing.csv" in errors[0] and "Traceback" not in r.stderr
    assert (next((tmp_path / "outputs" / "train" / "runs").iterdir()) / "failed.json").exists()


def test_multirun_over_two_values_makes_two_run_dirs(ferlab_cli, tmp_path):
    r = ferlab_cli("train", "-m", "seed=1,2", *TINY, cwd=tmp_path).result(300)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert [p.name for p in runs] == ["0", "1"]
    assert "seed=1" in (runs[0] / ".hydra" / "overrides.yaml").read_text()


def test_default_train_output_has_no_lightning_tip_and_no_flops_column(ferlab_cli, tmp_path):
    r = ferlab_cli("train", *[a for a in TINY if not a.startswith("callbacks.")], "test=false", cwd=tmp_path).result(300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Trainable params" in out and "│ net " in out  # the model summary is still printed...
    assert "FLOPs" not in out and "litlogger" not in out and "TPU available" not in out  # ...without the noise


def test_two_runs_started_together_get_different_dirs(ferlab_cli, tmp_path):
    procs = [ferlab_cli("train", *TINY, cwd=tmp_path) for _ in range(2)]  # two processes, started within ms
    for p in procs:
        r = p.result(300)
        assert r.returncode == 0, r.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").exists() for r in runs)


def test_synth_writes_fer2013_csv_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "faces.csv"
    r = run_cli("synth", str(out), "--num-images", "50", "--seed", "4", cwd=tmp_path)
    assert r.returncode == 0 and out.read_text().startswith("emotion,pixels,Usage\n")
    assert len(out.read_text().splitlines()) == 51
    r = run_cli("synth", str(out), cwd=tmp_path)
    assert r.returncode == 1 and "--overwrite" in r.stderr
