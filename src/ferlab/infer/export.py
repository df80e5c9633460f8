"""Export a restored network to ONNX or TorchScript with a dynamic batch dimension, then check parity.

ONNX first tries torch's TorchScript-based exporter (`dynamo=False`): fast, needs only `onnx`, and at
opset 20 it covers Deep-Emotion's affine_grid/grid_sample. Models it refuses (the VGGs' adaptive 7x7 pool
of a 1x1 map at 48 px) go through the dynamo exporter (torch.export + onnxscript). The file is written to
a temporary path, checked against PyTorch on random inputs, and renamed into place only if it agrees.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab.errors import FerlabError
from ferlab.infer.backends import METADATA_KEY, model_metadata, onnx_session
from ferlab.lit.user_errors import error_line
from ferlab.runs.io import atomic_write

FORMATS = ("onnx", "torchscript")
log = logging.getLogger("ferlab.tasks.export")


@dataclass
class ExportResult:
    """Where the model went and how far it is from PyTorch (max |logit difference| per batch size)."""

    path: Path
    format: str
    max_abs_diff: float
    diffs: dict[int, float]
    atol: float


EXPORTERS = ("auto", "legacy", "dynamo")



def _legacy_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch's TorchScript-based exporter: fast, needs only `onnx`; the batch axis named dynamic."""
    torch.onnx.export(
        net, (example,), str(path), dynamo=False, opset_version=opset,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def _dynamo_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.export-based exporter (needs `onnxscript`): decomposes ops the legacy one refuses."""
    program = torch.onnx.export(
        net, (example,), dynamo=True, opset_version=opset, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )
    program.save(str(path), external_data=False)


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise FerlabError(f"exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    with warnings.catch_warnings():  # the exporters' deprecation and tracer notes: nothing users can act on
        warnings.simplefilter("ignore")
        if exporter != "dynamo":
            try:
                return _legacy_onnx(net, example, path, opset)
            except Exception as e:  # UnsupportedOperatorError, SymbolicValueError...
                if exporter == "legacy":
                    raise FerlabError(f"ONNX export failed at opset {opset}: {error_line(e)}") from None
                log.info("legacy ONNX exporter failed (%s); trying the dynamo exporter", error_line(e))
        try:
            _dynamo_onnx(net, example, path, opset)
        except ImportError as e:
            raise FerlabError(f"ONNX export needs the dynamo exporter here; pip install onnxscript ({e})") from None
        except Exception as e:
            raise FerlabError(f"ONNX export (dynamo) failed at opset {opset}: {error_line(e)}") from None


def write_onnx(net: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any], opset: int = 20,
               exporter: str = "auto") -> None:
    """ONNX file with input `input` (batch, C, S, S), output `logits` (batch, K), ferlab metadata.

    exporter: legacy (TorchScript-based), dynamo (torch.export + onnxscript) or auto (legacy, then dynamo).
    """
    import onnx

    _export_onnx(net, example, path, opset, exporter)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(model, str(path))


def write_torchscript(net: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any], **_: Any) -> None:
    """A traced TorchScript module (batch size free) with ferlab metadata as an extra file."""
    with warnings.catch_warnings():  # torch.jit's deprecation notes: TorchScript is what is asked for here
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(net, example, check_trace=False)
        except Exception as e:
            raise FerlabError(f"TorchScript export failed: {str(e).strip().splitlines()[0]}") from None
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(meta)})


def run_exported(path: Path, fmt: str) -> Any:
    """A callable float32 (N, C, S, S) tensor -> (N, K) logits tensor running the exported file."""
    if fmt == "onnx":
        session = onnx_session(path, threads=1)
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: module(x)


@torch.inference_mode()
def parity(net: nn.Module, path: Path, fmt: str, shape: tuple[int, int, int], batches: list[int], seed: int) -> dict[int, float]:
    """Max |logit difference| between the exported file and `net` on random normal inputs, per batch size."""
    run = run_exported(path, fmt)
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batches:
        x = torch.randn(b, *shape, generator=gen)
        y = run(x)
        if tuple(y.shape) != (b, net(x[:1]).shape[1]):
            raise FerlabError(f"exported {fmt} model returned shape {tuple(y.shape)} for a batch of {b}")
        diffs[b] = float((y - net(x)).abs().max())
    return diffs


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def export(
    restored: Any, fmt: str, path: Path, *, opset: int = 20, exporter: str = "auto", batches: tuple[int, ...] = (1, 4),
    atol: float = 1e-4, seed: int = 0,
) -> ExportResult:
    """Export `restored.net` (eval mode, CPU) to `path`; refuse to keep a file whose logits differ by > atol."""
    if fmt not in WRITERS:
        raise FerlabError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    net = restored.net.cpu().eval()
    shape = (restored.in_chans, restored.image_size, restored.image_size)
    example = torch.randn(2, *shape)  # batch 2, so no size-1 dimension gets baked in as a constant
    meta = model_metadata(restored)
    diffs: dict[int, float] = {}

    def write(tmp: Path) -> None:
        WRITERS[fmt](net, example, tmp, meta, opset=opset, exporter=exporter)
        diffs.update(parity(net, tmp, fmt, shape, list(batches), seed))
        worst = max(diffs.values())
        if not worst <= atol:  # also catches NaN
            raise FerlabError(f"{fmt} export differs from PyTorch by {worst:.3g} > atol {atol:g}; not written")

    atomic_write(path, write)
    return ExportResult(path, fmt, max(diffs.values()), diffs, atol)
