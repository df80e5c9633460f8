"""Where the network runs (`backend=torch|torchscript|onnx`): normalized float32 (N, C, S, S) in, logits out.

`load_model` returns a backend with the model's `InputSpec` and class names. The PyTorch backend rebuilds
the network from a checkpoint (`ferlab.checkpoints.restore`); TorchScript and ONNX files written by `ferlab export`
carry the same facts as metadata, so they run without the checkpoint or ferlab's model code.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.config.runner import require_checkpoint
from ferlab.data.preprocessing import check_record
from ferlab.errors import FerlabError
from ferlab.infer.preprocess import InputSpec
from ferlab.lit.heads import Head, classes_head, stored_head
from ferlab.runs.device import resolve_device
from ferlab.runs.stored import check_plain, plain_list, refused
from ferlab.weights import is_builtin

METADATA_KEY = "ferlab"  # ONNX metadata_props key / TorchScript extra file holding `model_metadata()`
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass
class LoadedModel:
    """A runnable model: `run(x)` maps normalized (N, C, S, S) float32 to (N, outputs) float32: K class logits,
    and/or valence and arousal, as `head` says (`ferlab.lit.heads`).

    trained_on: the `data.name` the network was trained on, where known (e.g. "synthetic").
    preprocessing: how its inputs were made (`ferlab.infer.preprocessing` record), None where not recorded.
    """

    run: Any
    spec: InputSpec
    class_names: list[str]
    source: Path
    backend: str
    trained_on: str | None = None
    head: Head | None = None
    preprocessing: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.head is None:
            self.head = classes_head(len(self.class_names))


def model_metadata(restored: Any) -> dict[str, Any]:
    """What an exported file needs to be fed and read: input spec, class names, which output column is what
    (`head`: class logits, valence, arousal), where it came from."""
    return {
        "class_names": restored.class_names,
        "in_chans": restored.in_chans,
        "image_size": restored.image_size,
        "mean": restored.mean,
        "std": restored.std,
        "model": restored.config.get("model", {}).get("_target_"),
        "checkpoint": str(restored.path),
        "data": (restored.config.get("data") or {}).get("name"),
        "head": restored.head.describe(),
        "preprocessing": restored.preprocessing,
    }


def exported_path(ckpt_path: str | Path, fmt: str) -> Path:
    """Default file `ferlab export` writes for a checkpoint: beside it, e.g. best.ckpt -> best.onnx."""
    path = Path(ckpt_path)
    return path.with_name(path.name.removesuffix(".ckpt") + SUFFIXES[fmt])


def _spec(meta: dict[str, Any], color: str) -> InputSpec:
    return InputSpec.build(meta["in_chans"], meta["image_size"], meta["mean"], meta["std"], color)


def _parse_meta(text: str | bytes | None, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text) if text else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not {"class_names", "in_chans", "image_size", "mean", "std"} <= meta.keys():
        raise FerlabError(f"{path} has no ferlab metadata; export it with `ferlab export`")
    where = f"{path} metadata"  # data, like a checkpoint's config: checked, never instantiated
    check_plain(meta, "", where)
    plain_list(meta["class_names"], "class_names", where, str)
    plain_list(meta["mean"], "mean", where, (int, float))
    plain_list(meta["std"], "std", where, (int, float))
    for key in ("in_chans", "image_size"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise refused(where, key, f"expected a positive integer, got {meta[key]!r}"[:120])
    return {**meta, "preprocessing": check_record(meta.get("preprocessing"), where)}


def _head(meta: dict[str, Any], path: Path) -> Head:
    """The output head an exported file's metadata describes (files from before heads: class logits)."""
    return stored_head(meta.get("head"), len(meta["class_names"]), f"{path} metadata")


def load_torch(path: Path, color: str, device: str, threads: int = 0, model: Mapping | None = None) -> LoadedModel:
    """The network rebuilt from a ferlab checkpoint, on `device` (auto: CUDA when available).

    model: the user's own model config (`{_target_: ...}`), for a network outside ferlab's registry.
    """
    import torch

    from ferlab.checkpoints.restore import restore

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    r = restore(path, map_location=dev, model=model)
    spec = InputSpec.build(r.in_chans, r.image_size, r.mean, r.std, color)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return r.net(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return LoadedModel(run, spec, r.class_names, path, "torch", (r.config.get("data") or {}).get("name"), r.head,
                       r.preprocessing)


def load_torchscript(path: Path, color: str, device: str, threads: int = 0) -> LoadedModel:
    """A TorchScript file from `ferlab export format=torchscript`."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    extra = {METADATA_KEY: ""}
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation note
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location=dev, _extra_files=extra).eval()
    except Exception as e:  # RuntimeError for foreign or truncated archives
        raise FerlabError(f"cannot load TorchScript model {path}: {str(e).strip().splitlines()[0]}") from None
    meta = _parse_meta(extra[METADATA_KEY], path)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return LoadedModel(run, _spec(meta, color), list(meta["class_names"]), path, "torchscript", meta.get("data"),
                       _head(meta, path), meta.get("preprocessing"))


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime session (CUDA first when the installed build has it); threads=0: ORT's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise FerlabError(f"cannot load ONNX model {path}: {str(e).strip().splitlines()[0]}") from None


def load_onnx(path: Path, color: str, device: str, threads: int = 0) -> LoadedModel:
    """An ONNX file from `ferlab export format=onnx`, run by onnxruntime."""
    session = onnx_session(path, threads)
    meta = _parse_meta(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return LoadedModel(run, _spec(meta, color), list(meta["class_names"]), path, "onnx", meta.get("data"),
                       _head(meta, path), meta.get("preprocessing"))


LOADERS = {"torch": load_torch, "torchscript": load_torchscript, "onnx": load_onnx}


def set_threads(threads: int) -> None:
    """CPU threads for OpenCV (0: its default); the torch loaders and ONNX Runtime sessions take their own.

    One thread gives the steadiest per-frame latency for a few faces, and leaves cores to capture and
    detection: on a busy machine, multi-threaded tiny batches stall waiting for descheduled threads.
    """
    if threads and threads > 0:
        import cv2

        cv2.setNumThreads(threads)


def load_model(
    ckpt_path: str | None, backend: str = "torch", model_path: str | None = None, color: str = "auto",
    device: str = "auto", threads: int = 0, model: Mapping | None = None,
) -> LoadedModel:
    """A model for `backend`; exported backends read `model_path`, by default the export beside `ckpt_path`.

    threads: CPU threads for the model and OpenCV (0: library defaults), see `set_threads`.
    model: backend=torch: the user's own model config for a network outside ferlab's registry.
    """
    if threads is None or threads < 0:
        raise FerlabError(f"threads: expected 0 (library default) or a positive count, got {threads!r}")
    set_threads(threads)
    if backend not in LOADERS:
        raise FerlabError(f"backend: expected one of {', '.join(LOADERS)}, got {backend!r}")
    if backend == "torch":
        return load_torch(require_checkpoint(ckpt_path), color, device, threads, model)
    if not model_path and not ckpt_path:
        raise FerlabError(f"backend={backend} needs model_path=<file> or ckpt_path= (to find its export beside it)")
    if not model_path and is_builtin(ckpt_path):
        raise FerlabError(f"backend={backend} with ckpt_path={ckpt_path} needs model_path=<file>: "
                          f"`ferlab export ckpt_path={ckpt_path} format={backend}` writes one into its run directory")
    path = Path(model_path) if model_path else exported_path(ckpt_path, backend)
    if not path.is_file():
        hint = f"; run `ferlab export ckpt_path={ckpt_path} format={backend}` first" if not model_path else ""
        raise FerlabError(f"{backend} model not found: {path}{hint}")
    return LOADERS[backend](path, color, device, threads)
