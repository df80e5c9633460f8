"""A checkpoint is data, not code: a stored config naming any callable outside ferlab's registries is refused
with one line before anything is called, through eval, predict, export and explain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.config.runner import compose_run, guarded
from ferlab.errors import FerlabError
from ferlab.tasks.evaluate import run_eval
from ferlab.tasks.explain import run_explain
from ferlab.tasks.export import run_export
from ferlab.tasks.predict import run_predict

PRECIOUS = "the user's results, not to be touched\n"
ZEN = "Beautiful is better than ugly"  # what `import this` prints


def hostile_configs(precious: Path, created: Path) -> dict[str, tuple[str, dict]]:
    """name -> (section, the replacement for that section of the stored config, given the genuine one)."""
    return {
        "open": ("model", {"_target_": "builtins.open", "_args_": [str(precious), "w"]}),
        "copyfile": ("model", {"_target_": "shutil.copyfile", "_args_": [str(created.parent / "x"), str(precious)]}),
        "subprocess": ("model", {"_target_": "subprocess.run", "args": ["touch", str(created)]}),
        "import_module": ("model", {"_target_": "importlib.import_module", "name": "this"}),
        "nested": ("model.act", {"_target_": "builtins.open", "file": str(created), "mode": "w"}),
        "partial": ("model._partial_", True),
        "interpolation": ("model.width", "${oc.env:HOME}"),
        "data_source": ("data.source", {"_target_": "builtins.open", "file": str(created), "mode": "w"}),
    }


@pytest.fixture(scope="module")
def hostile(ckpt, tmp_path_factory) -> tuple[dict[str, Path], Path, Path]:
    """Hand-made checkpoints that load with weights_only=True, a file of the user's, and a path never to create."""
    root = tmp_path_factory.mktemp("hostile")
    precious, created = root / "precious.txt", root / "created.txt"
    (root / "x").write_text("another file's content\n")
    genuine = torch.load(ckpt, weights_only=True, map_location="cpu")
    files = {}
    for name, (key, value) in hostile_configs(precious, created).items():
        evil = torch.load(ckpt, weights_only=True, map_location="cpu")
        node = evil["hyper_parameters"]["config"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        files[name] = root / f"{name}.ckpt"
        torch.save(evil, files[name])
        assert torch.load(files[name], weights_only=True)["state_dict"].keys() == genuine["state_dict"].keys()
    photo = root / "face.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    return files, precious, created


TASKS = {
    "eval": (run_eval, []),
    "predict": (run_predict, ["input={photo}", "detector=none", "progress=false"]),
    "export": (run_export, ["out_path={out}/m.onnx"]),
    "explain": (run_explain, ["method=filters"]),
}


@pytest.mark.parametrize("kind", list(hostile_configs(Path("p"), Path("c"))))
def test_hostile_checkpoint_is_refused_by_every_task_before_anything_runs(kind, hostile, tmp_path, capsys):
    files, precious, created = hostile
    for task, (fn, extra) in TASKS.items():
        precious.write_text(PRECIOUS)
        overrides = [o.format(photo=precious.parent / "face.png", out=tmp_path) for o in extra]
        cfg = compose_run(task, [f"paths.root_dir={tmp_path}", f"ckpt_path={files[kind]}", *overrides],
                          tmp_path / task)
        with pytest.raises(SystemExit) as exit_:
            guarded(fn, cfg)  # the CLI's wrapper: one line on stderr, exit code
        out, err = capsys.readouterr()
        assert exit_.value.code == 1, (task, kind)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ferlab: error: "), (task, kind, err)
        assert str(files[kind]) in lines[0] and "refused" in lines[0], (task, kind, lines[0])
        assert precious.read_text() == PRECIOUS and not created.exists(), (task, kind)
        assert ZEN not in out + err and not any(w in out for w in ("exported", "results", "report:")), (task, out)
        assert not (tmp_path / "m.onnx").exists()


def test_refusal_names_the_key(hostile):
    from ferlab.checkpoints.restore import restore

    files, *_ = hostile
    expected = {"open": "model._args_", "nested": "model.act._target_", "partial": "model._partial_",
                "interpolation": "model.width", "data_source": "data.source._target_",
                "subprocess": "model._target_", "import_module": "model._target_"}
    for kind, key in expected.items():
        with pytest.raises(FerlabError, match=f"refused {key}"):
            restore(files[kind])


def test_cli_refuses_with_one_line_and_leaves_the_users_file(hostile, ferlab_cli, tmp_path):
    files, precious, created = hostile
    precious.write_text(PRECIOUS)
    r = ferlab_cli("eval", f"ckpt_path={files['open']}", cwd=tmp_path).result(300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "refused model._args_" in r.stderr
    assert "Traceback" not in r.stderr and precious.read_text() == PRECIOUS


def test_a_users_own_model_class_is_named_by_the_user(ckpt, tmp_path):
    """A checkpoint naming an unregistered class is refused; the user can name that class themselves."""
    from ferlab.checkpoints.restore import restore

    evil = torch.load(ckpt, weights_only=True, map_location="cpu")
    genuine_target = evil["hyper_parameters"]["config"]["model"]["_target_"]
    evil["hyper_parameters"]["config"]["model"]["_target_"] = "tests.test_hostile_checkpoints.my_own_net"
    path = tmp_path / "own.ckpt"
    torch.save(evil, path)
    with pytest.raises(FerlabError, match=r"not a registered ferlab model.*\+model._target_="):
        restore(path)
    restored = restore(path, model={"_target_": genuine_target})  # e.g. +model._target_=... on the command line
    assert restored.net.head.out_features == 7


def test_export_metadata_is_data(tmp_path):
    from ferlab.infer.backends import _parse_meta

    meta = '{"class_names": ["a"], "in_chans": {"_target_": "builtins.open"}, "image_size": 48, "mean": [0.5], "std": [0.2]}'
    with pytest.raises(FerlabError, match="refused in_chans._target_"):
        _parse_meta(meta, tmp_path / "m.onnx")


def test_where_data_is_cached_and_how_many_processes_decode_it_are_not_the_files(ckpt, tmp_path):
    """A stored cache_dir / decode_workers are ignored (this machine's paths.cache_dir is used), and a stored
    synthetic set that is not on disk is not rendered into the path the file names."""
    from ferlab.tasks.evaluate import run_eval

    evil = torch.load(ckpt, weights_only=True, map_location="cpu")
    data = evil["hyper_parameters"]["config"]["data"]
    data.update(cache_dir=str(tmp_path / "elsewhere"), decode_workers=10_000, num_workers=64)
    torch.save(evil, tmp_path / "a.ckpt")
    report = run_eval(compose_run("eval", [f"paths.root_dir={tmp_path}", f"ckpt_path={tmp_path / 'a.ckpt'}",
                                           "tensorboard=false"], tmp_path / "eval_a"))
    assert report["splits"] and not (tmp_path / "elsewhere").exists() and (tmp_path / ".cache" / "ferlab").is_dir()
    data["source"]["csv_path"] = str(tmp_path / "planted" / "faces.csv")
    torch.save(evil, tmp_path / "b.ckpt")
    with pytest.raises(FerlabError, match="not on this machine"):
        run_eval(compose_run("eval", [f"paths.root_dir={tmp_path}", f"ckpt_path={tmp_path / 'b.ckpt'}"],
                             tmp_path / "eval_b"))
    assert not (tmp_path / "planted").exists()


def test_timm_weights_come_only_through_model_pretrained():
    from ferlab.models.registry import create_model

    with pytest.raises(FerlabError, match="model.model_kwargs.checkpoint_path"):
        create_model("timm", name="resnet18", model_kwargs={"checkpoint_path": "/tmp/anything.pth"})
