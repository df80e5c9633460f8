"""The user's own config folder beside ferlab's (./conf, --config-dir, hydra.searchpath), `ferlab init`, and which
ferlab made a result (`--version`, metrics.json, checkpoints). Composition only (--cfg job): no training here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferlab.config.runner import CONF_DIR, compose_run
from ferlab.config.searchpath import conf_root
from tests.conftest import REPO, run_cli

EXPERIMENT = "# @package _global_\ndefaults:\n  - override /model: my_resnet\n  - _self_\ntask_name: mine\nseed: 7\n"
MODEL = "_target_: ferlab.models.resnet.resnet18_small\nin_chans: ${data.in_chans}\nnum_classes: ${data.num_classes}\nwidth: 4\n"


def _user_conf(folder: Path) -> Path:
    """A user config folder: an experiment of theirs picking a model config of theirs."""
    (folder / "experiment").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "experiment" / "mine.yaml").write_text(EXPERIMENT)
    (folder / "model" / "my_resnet.yaml").write_text(MODEL)
    return folder


def _one_error_line(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ferlab: error: ")
    return line


def test_config_root_is_found_through_the_package():
    import ferlab

    assert Path(CONF_DIR) == conf_root() == (Path(ferlab.__file__).parent / "conf").resolve()
    assert (conf_root() / "train.yaml").is_file() and (conf_root() / "experiment" / "zoo_fer2013.yaml").is_file()


def test_conf_in_the_current_folder_adds_experiments_and_models(tmp_path):
    _user_conf(tmp_path / "conf")
    r = run_cli("train", "experiment=mine", "--cfg", "job", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "task_name: mine" in r.stdout and "seed: 7" in r.stdout and "width: 4" in r.stdout
    help_ = run_cli("train", "--help", cwd=tmp_path).stdout  # the user's options are listed with ferlab's
    assert "mine" in help_ and "my_resnet" in help_ and "zoo_fer2013" in help_


def test_config_dir_flag_and_hydra_searchpath_name_another_folder(tmp_path):
    _user_conf(tmp_path / "elsewhere")
    for how in (["--config-dir", "elsewhere"], ["hydra.searchpath=[file://elsewhere]"]):
        r = run_cli("train", "experiment=mine", *how, "--cfg", "job", cwd=tmp_path)
        assert r.returncode == 0 and "task_name: mine" in r.stdout, (how, r.stderr[-2000:])


def test_missing_user_folder_is_one_line(tmp_path):
    assert "config folder not found: nope (from --config-dir)" in _one_error_line(
        run_cli("train", "--config-dir", "nope", "--cfg", "job", cwd=tmp_path))
    assert "config folder not found: gone (from hydra.searchpath)" in _one_error_line(
        run_cli("eval", "hydra.searchpath=[gone]", "--cfg", "job", cwd=tmp_path))


def test_user_option_shadowing_ferlabs_is_one_line(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "resnet18.yaml").write_text(MODEL)
    line = _one_error_line(run_cli("train", "--cfg", "job", cwd=tmp_path))
    assert "conf/model/resnet18.yaml shadows ferlab's model=resnet18" in line
    for name in ("train.yaml", "paths/default.yaml"):  # ./conf of another ferlab checkout than the one imported
        (tmp_path / "conf" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "conf" / name).write_text("seed: 1\n")
    assert "is another ferlab's own config folder" in _one_error_line(run_cli("train", "--cfg", "job", cwd=tmp_path))


def test_compose_run_reads_the_users_folder(tmp_path):
    folder = _user_conf(tmp_path / "mine")
    cfg = compose_run("train", [f"paths.root_dir={tmp_path}", "experiment=mine"], tmp_path / "run", config_dir=folder)
    assert cfg.task_name == "mine" and cfg.model.width == 4


def test_init_writes_a_starter_that_composes_and_refuses_to_overwrite(tmp_path):
    r = run_cli("init", "proj", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cd proj" in r.stdout and "ferlab train experiment=my_experiment debug=smoke" in r.stdout
    project = tmp_path / "proj"
    assert len((project / "README.md").read_text().splitlines()) == 5
    assert "data_dir:" in (project / "conf" / "local" / "default.yaml").read_text()
    job = run_cli("train", "experiment=my_experiment", "--cfg", "job", cwd=project)
    assert job.returncode == 0 and "task_name: my_experiment" in job.stdout and "max_epochs: 30" in job.stdout
    again = run_cli("init", "proj", cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0 and "not an empty folder" in again.stderr


def test_version_names_the_commit_in_a_checkout(tmp_path):
    r = run_cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ferlab ")
    if (REPO / ".git").exists():  # run from ferlab's own checkout (not an unpacked sdist)
        assert "(git " in r.stdout


@pytest.mark.parametrize("which", ["metrics", "checkpoint"])
def test_runs_and_checkpoints_record_the_version(which, trained, ckpt):
    from ferlab.runs.version import version_info

    stored = trained["ferlab"] if which == "metrics" else torch.load(ckpt, weights_only=True)["ferlab_version"]
    assert stored == version_info() and stored["version"]


class NoPretrainedNet(torch.nn.Sequential):
    """A user's own model class, without a `pretrained` argument."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))


def test_debug_smoke_builds_a_users_model_without_a_pretrained_argument(tmp_path):
    """debug=smoke turns pretrained weights off on every model (`model.pretrained: null`); a class of the user's
    that has no such argument is built without it, ferlab's own models still get it."""
    from hydra.utils import instantiate

    from ferlab.tasks.train import model_config

    cfg = compose_run("train", [f"paths.root_dir={tmp_path}", "debug=smoke",
                                f"model._target_={__name__}.NoPretrainedNet", "~model.stem", "~model.width",
                                "~model.drop_rate", "~model.norm", "~model.act", "~model.fusion",
                                "~model.fusion_stages"], tmp_path / "run")
    assert cfg.model.pretrained is None and "pretrained" not in model_config(cfg.model)
    assert isinstance(instantiate(model_config(cfg.model)), NoPretrainedNet)
    zoo = compose_run("train", [f"paths.root_dir={tmp_path}", "debug=smoke"], tmp_path / "run")
    assert model_config(zoo.model) is zoo.model
