"""Per-frame latency of `ferlab demo`/`predict`: face detection plus classification, PyTorch vs ONNX Runtime.

A 640x480 frame holding one face (scikit-image's astronaut photo, shrunk and placed on gray), one CPU
thread everywhere (torch.set_num_threads(1), cv2.setNumThreads(1), ORT intra_op_num_threads=1), the default
model (resnet18_small from conf/model, randomly initialised: latency does not depend on the weights), each
detector preset from conf/detector. Median and 90th percentile over the timed frames after a warm-up;
ratios are against PyTorch in the same run. Target: at least 30 frames/s.

    .venv/bin/python -m benchmarks.inference [--quick]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import cli, machine, table

TARGET_FPS = 30.0


def test_frame() -> np.ndarray:
    """BGR (480, 640, 3): the astronaut photo at 0.8 scale on gray, face about 75 px wide."""
    import cv2
    from skimage import data

    photo = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), None, fx=0.8, fy=0.8)
    frame = np.full((480, 640, 3), 100, np.uint8)
    frame[40 : 40 + 410, 200 : 200 + 410] = photo[:410, :410]
    return frame


def _compose(config: str, overrides: list[str], hydra_cfg: bool = False) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config.runner import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=hydra_cfg)


def build_models(tmp: Path) -> tuple[dict[str, Any], str]:
    """{"PyTorch": LoadedModel, "ONNX Runtime": LoadedModel} for the default model, and its name."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ferlab.checkpoints.restore import Restored
    from ferlab.infer.backends import LoadedModel, load_onnx
    from ferlab.infer.export import export
    from ferlab.infer.preprocess import InputSpec

    cfg = _compose("train", [], hydra_cfg=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    net = instantiate(model_cfg).eval()
    data = cfg.data
    restored = Restored(net, {"model": model_cfg}, list(data.class_names), data.in_chans, data.image_size,
                        list(data.mean), list(data.std), tmp / "random.ckpt")
    onnx_path = export(restored, "onnx", tmp / "model.onnx").path
    spec = InputSpec.build(data.in_chans, data.image_size, data.mean, data.std)

    @torch.inference_mode()
    def run_torch(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).numpy()

    torch_model = LoadedModel(run_torch, spec, list(data.class_names), restored.path, "torch")
    name = cfg.hydra.runtime.choices.model
    return {"PyTorch": torch_model, "ONNX Runtime": load_onnx(onnx_path, "auto", "cpu", threads=1)}, name


def detector(name: str, overrides: tuple[str, ...] = ()) -> Any:
    """A detector preset from conf/detector/<name>.yaml, with `detector.<key>=<value>` overrides."""
    from hydra.utils import instantiate

    return instantiate(_compose("demo", [f"detector={name}", "ckpt_path=x", *overrides]).detector)


# (row name, preset, overrides): Haar crops, and MTCNN with its five landmarks aligned onto the ArcFace template
DETECTORS = (("haar", "haar", ()), ("haar_fast", "haar_fast", ()),
             ("mtcnn_fast + align", "mtcnn_fast", ("detector.align=true",)),
             ("mtcnn + align", "mtcnn", ("detector.align=true",)))


def _time(fn: Callable[[], Any], frames: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def measure(frames: int, warmup: int) -> tuple[list[dict[str, Any]], str]:
    """Rows of the table: one per detector preset x backend."""
    from ferlab.infer.predictor import Predictor

    frame, rows = test_frame(), []
    with tempfile.TemporaryDirectory() as tmp:
        models, model_name = build_models(Path(tmp))
        for det_name, preset, overrides in DETECTORS:
            det = detector(preset, overrides)
            found = det.detect(frame)
            if len(found) != 1:
                raise RuntimeError(f"detector {det_name} found {len(found)} faces in the test frame, expected 1")
            detect_ms = _time(lambda det=det: det.detect(frame), frames, warmup)
            for backend, model in models.items():
                predictor = Predictor(model, det)
                classify_ms = _time(lambda p=predictor, f=found: p.classify(frame, f), frames, warmup)
                total_ms = _time(lambda p=predictor: p(frame), frames, warmup)
                rows.append({"detector": det_name, "backend": backend, "detect": statistics.median(detect_ms),
                             "classify": statistics.median(classify_ms), "total": statistics.median(total_ms),
                             "p90": float(np.percentile(total_ms, 90))})
    return rows, model_name


def to_markdown(rows: list[dict[str, Any]], model_name: str, frames: int, quick: bool) -> str:
    """The results table plus how it was measured."""
    torch_classify = {r["detector"]: r["classify"] for r in rows if r["backend"] == "PyTorch"}
    fast = {r["backend"]: r["total"] for r in rows if r["detector"] == "haar_fast"}
    body = []
    for r in rows:
        fps = 1000 / r["total"]
        body.append([
            f"`{r['detector']}`", r["backend"], f"{r['detect']:.1f}", f"{r['classify']:.2f}",
            f"{torch_classify[r['detector']] / r['classify']:.2f}x", f"{r['total']:.1f} ({r['p90']:.1f})",
            f"{r['total'] / fast[r['backend']]:.2f}x", f"{fps:.0f}", "yes" if fps >= TARGET_FPS else "no",
        ])
    headers = ["detector", "backend", "detection ms", "crop or align + classification ms", "vs PyTorch",
               "frame ms (p90)", "frame vs `haar_fast`", "frames/s", f">= {TARGET_FPS:.0f} fps"]
    return "\n".join([
        f"### Inference latency per 640x480 frame, one face, 1 CPU thread{' (--quick)' if quick else ''}",
        "",
        f"Model: `{model_name}` (default `model=`, randomly initialised, 1x48x48 input). Median over {frames} "
        f"frames after warm-up; p90 of the whole frame. Target: {TARGET_FPS:.0f} frames/s. Machine: {machine()}; "
        f"load average {os.getloadavg()[0]:.1f} when it started.",
        "",
        table(headers, body, right=range(2, 8)),
        "",
        "`haar`: `ferlab predict`'s fallback detector (frames up to 1280 px, scale step 1.1, faces from 24 px); "
        "`haar_fast`: `ferlab demo`'s (frames shrunk to 400 px, step 1.25, faces from 64 px); `mtcnn + align`: MTCNN "
        "(faces from 20 px) with the face warped onto the ArcFace template from its five landmarks, `mtcnn_fast + "
        "align` the same with faces from 64 px (`ferlab demo detector=mtcnn_fast detector.align=true`, or "
        "`detector=auto_fast` for a checkpoint trained on `ferlab align` output). "
        "\"vs PyTorch\": PyTorch classification time / this backend's (above 1: faster); \"frame vs `haar_fast`\": "
        "the whole frame's time / `haar_fast`'s on the same backend in the same run (the ratio holds on a loaded "
        "machine, where absolute times do not).",
    ]) + "\n"


def main(quick: bool = False) -> str:
    """Measure on one thread and return the markdown (`python -m benchmarks.inference` also writes it)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    frames, warmup = (20, 3) if quick else (200, 20)
    rows, model_name = measure(frames, warmup)
    return to_markdown(rows, model_name, frames, quick)


if __name__ == "__main__":
    cli("inference", main, __doc__.splitlines()[0])
