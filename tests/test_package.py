"""ferlab as users install it: an sdist and a wheel built from this checkout (offline, no isolation), the wheel
installed alone into a fresh folder and run from folders outside the checkout, with the user's own configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SMALL = ["model.width=8", "logger=none", "callbacks.rich_model_summary=null"]


def _configs(root: Path) -> set[str]:
    """Every YAML under a config root, links followed (conf/experiment -> experiments/), conf/local/ left out."""
    found = {(Path(d) / f).relative_to(root).as_posix() for d, _, files in os.walk(root, followlinks=True)
             for f in files if f.endswith(".yaml")}
    return {name for name in found if not name.startswith("local/")}


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """An sdist of this checkout, and the wheel built from that sdist (so the sdist is complete), once a session."""
    out = tmp_path_factory.mktemp("dist")
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist = out / _run([sys.executable, "-c", hook, str(out)], cwd=REPO).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    tree = next((out / "src").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(tree)], cwd=out)
    return {"sdist": sdist, "tree": tree, "wheel": next(out.glob("ferlab-*.whl"))}


@pytest.fixture(scope="session")
def installed(built, tmp_path_factory) -> dict:
    """The wheel pip-installed into a fresh folder without dependencies, and an environment that imports it:
    the folder alone on PYTHONPATH, ahead of the venv's editable install of a checkout."""
    site = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
          str(built["wheel"])], cwd=site)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    for var in ("FERLAB_ROOT", "FERLAB_RUN_ID"):
        env.pop(var, None)
    return {"site": site, "env": env}


def test_sdist_and_wheel_carry_every_config(built):
    expected = _configs(REPO / "conf")
    assert "experiment/report001_resnet18_fer2013.yaml" in expected and "train.yaml" in expected
    assert _configs(built["tree"] / "src" / "ferlab" / "conf") == expected
    names = zipfile.ZipFile(built["wheel"]).namelist()
    in_wheel = {n.removeprefix("ferlab/conf/") for n in names if n.startswith("ferlab/conf/") and n.endswith(".yaml")}
    assert in_wheel == expected
    shipped = ["ferlab/weights/fer2013_mini_xception.ckpt", "ferlab/weights/NOTICE"]  # builtin: weights, licences
    assert all(n in names and (built["tree"] / "src" / n).is_file() for n in shipped), shipped
    weights = {f"ferlab/infer/weights/{n}" for n in ("mtcnn_pnet.onnx", "mtcnn_rnet.onnx", "mtcnn_onet.onnx", "NOTICE")}
    assert weights <= set(names)  # the face detector's networks and their licence travel with the wheel


def _ferlab(installed: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "ferlab", *args], cwd=cwd, env=installed["env"])


def _one_run(outputs: Path) -> Path:
    runs = list(outputs.glob("*/runs/*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_wheel_trains_from_an_empty_folder(installed, tmp_path):
    where = _ferlab(installed, tmp_path, "--version")  # the installed copy: no checkout, so no git commit
    code = "import ferlab, ferlab.config.runner; print(ferlab.__file__); print(ferlab.config.runner.CONF_DIR)"
    imported = _run([sys.executable, "-c", code], cwd=tmp_path, env=installed["env"]).stdout.split()
    site = installed["site"].resolve()
    assert all(Path(p).resolve().is_relative_to(site) for p in imported), imported
    assert where.stdout.strip().startswith("ferlab ") and "git" not in where.stdout

    _ferlab(installed, tmp_path, "train", "debug=smoke", *SMALL)
    run = _one_run(tmp_path / "outputs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ferlab"]["commit"] is None and where.stdout.split()[1] == metrics["ferlab"]["version"]
    assert (tmp_path / "data" / "synthetic").is_dir() and (tmp_path / ".cache" / "ferlab").is_dir()


def test_wheel_predicts_a_real_face_offline_with_its_builtin_model(installed, tmp_path):
    """`ferlab predict input=<photo>` right after install: no checkpoint given, the weights come from the wheel."""
    import cv2
    from skimage import data

    cv2.imwrite(str(tmp_path / "astronaut.png"), data.astronaut()[:, :, ::-1])
    _ferlab(installed, tmp_path, "predict", "input=astronaut.png", "progress=false", "annotate=false")
    doc = json.loads(next((tmp_path / "outputs" / "predict" / "runs").glob("*/predictions.json")).read_text())
    assert Path(doc["model"]["path"]).resolve().is_relative_to(installed["site"].resolve())
    (face,) = doc["predictions"][0]["faces"]
    assert face["label"] == "happy", face


USER_NET = """from torch import nn


class TinyNet(nn.Sequential):
    def __init__(self, in_chans: int, num_classes: int, width: int = 8):
        super().__init__(nn.Conv2d(in_chans, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))
"""
USER_MODEL = "_target_: mynets.TinyNet\nin_chans: ${data.in_chans}\nnum_classes: ${data.num_classes}\nwidth: 4\n"
USER_EXPERIMENT = """# @package _global_
defaults:
  - override /model: tiny_net
  - _self_
task_name: tiny
test: false
data:
  source:
    num_images: 300
trainer:
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  num_sanity_val_steps: 0
"""


def test_wheel_with_the_users_own_configs(installed, tmp_path):
    project = tmp_path / "project"
    starter = _ferlab(installed, tmp_path, "init", str(project)).stdout
    assert "ferlab train experiment=my_experiment" in starter
    composed = _ferlab(installed, project, "train", "experiment=my_experiment", "--cfg", "job").stdout
    assert "task_name: my_experiment" in composed and "ferlab.models.resnet.resnet18\n" in composed  # report001's

    (project / "conf" / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  data_dir: ${paths.root_dir}/faces\n")
    (project / "conf" / "model").mkdir()
    (project / "conf" / "model" / "tiny_net.yaml").write_text(USER_MODEL)
    (project / "conf" / "experiment" / "tiny.yaml").write_text(USER_EXPERIMENT)
    (project / "mynets.py").write_text(USER_NET)  # python -m puts the current folder on the import path
    _ferlab(installed, project, "train", "experiment=tiny", "callbacks.rich_progress_bar=null", *SMALL[1:])
    run = _one_run(project / "outputs")
    assert run.parts[-3] == "tiny" and "_target_: mynets.TinyNet" in (run / ".hydra" / "config.yaml").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (project / "faces" / "synthetic").is_dir()  # conf/local/default.yaml was read
