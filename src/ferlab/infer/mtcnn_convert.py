"""How ferlab's MTCNN files were made: the released PyTorch state dicts -> ONNX, checked for parity.

The three networks of MTCNN (Zhang et al. 2016) are defined here in PyTorch with the module names of the state
dicts that ship in the `facenet-pytorch` 2.6.0 wheel (`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT), which load
into it with `weights_only=True`. `convert` exports each to ONNX (P-Net with free height and width, the others
with a free batch) and keeps a file only if ONNX Runtime's outputs equal PyTorch's within 1e-5 on random inputs.
ferlab ships the results (`ferlab/infer/weights/mtcnn_*.onnx`, see `weights/NOTICE`) and runs them with OpenCV's DNN
module, about twice as fast as PyTorch on these small networks at one CPU thread. To redo it:

    pip download --no-deps facenet-pytorch==2.6.0 && unzip facenet_pytorch-2.6.0-py3-none-any.whl 'facenet_pytorch/data/*'
    python -m ferlab.infer.mtcnn_convert facenet_pytorch/data src/ferlab/infer/weights
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferlab.errors import FerlabError
from ferlab.runs.io import atomic_write

# per network: (conv out channels, kernel, max-pool (kernel, stride) after it or None), dense width, head widths
STAGES = {
    "pnet": ([(10, 3, (2, 2)), (16, 3, None), (32, 3, None)], None, (2, 4)),
    "rnet": ([(28, 3, (3, 2)), (48, 3, (3, 2)), (64, 2, None)], 128, (2, 4)),
    "onet": ([(32, 3, (3, 2)), (64, 3, (3, 2)), (64, 3, (2, 2)), (128, 2, None)], 256, (2, 4, 10)),
}
INPUT = {"pnet": 12, "rnet": 24, "onet": 48}  # the window each network classifies
FLAT = {"rnet": 64 * 3 * 3, "onet": 128 * 3 * 3}  # features entering the dense layer
OUTPUTS = ("prob", "offsets", "landmarks")


class Stage(nn.Module):
    """One MTCNN network: PReLU convolutions (with ceil-mode max pools), then 1x1 convolution heads (P-Net, fully
    convolutional) or a PReLU dense layer and linear heads (R-Net, O-Net).

    forward: (B, 3, H, W) RGB, (x - 127.5) / 128 -> (no face, face) probabilities (B, 2, ...), box offsets
    (B, 4, ...) [, landmarks (B, 10): five x then five y, fractions of the window].
    """

    def __init__(self, convs: list[tuple[int, int, tuple[int, int] | None]], dense: int | None,
                 heads: tuple[int, ...], flat: int = 0) -> None:
        super().__init__()
        channels = 3
        for i, (out, kernel, pool) in enumerate(convs, 1):
            self.add_module(f"conv{i}", nn.Conv2d(channels, out, kernel))
            self.add_module(f"prelu{i}", nn.PReLU(out))
            if pool:
                self.add_module(f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))
            channels = out
        self.depth, self.dense = len(convs), dense is not None
        n = len(convs) + 1  # the released files name the heads conv4_1, dense5_1, dense6_1 ...
        if dense is not None:
            self.add_module(f"dense{n}", nn.Linear(flat, dense))
            self.add_module(f"prelu{n}", nn.PReLU(dense))
            channels, n = dense, n + 1
        self.heads = [f"{'dense' if dense else 'conv'}{n}_{k}" for k in range(1, len(heads) + 1)]
        for name, width in zip(self.heads, heads, strict=True):
            self.add_module(name, nn.Linear(channels, width) if dense else nn.Conv2d(channels, width, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
            if hasattr(self, f"pool{i}"):
                x = getattr(self, f"pool{i}")(x)
        if self.dense:
            n = self.depth + 1
            x = x.permute(0, 3, 2, 1).flatten(1)  # (B, W, H, C): the order the released dense weights expect
            x = getattr(self, f"prelu{n}")(getattr(self, f"dense{n}")(x))
        out = [getattr(self, name)(x) for name in self.heads]
        return (out[0].softmax(1), *out[1:])


def build(name: str) -> Stage:
    """An untrained network (`pnet`, `rnet` or `onet`)."""
    convs, dense, heads = STAGES[name]
    return Stage(convs, dense, heads, FLAT.get(name, 0)).eval()


def load(name: str, path: Path) -> Stage:
    """A network with a released state dict; a missing or foreign file is one line naming it."""
    net = build(name)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # OSError, UnpicklingError, RuntimeError (missing keys, shapes)
        raise FerlabError(f"MTCNN weights {path} cannot be loaded: {str(e).strip().splitlines()[0]}") from None
    return net


def export(net: Stage, name: str, path: Path, atol: float = 1e-5) -> float:
    """Write `net` as ONNX at `path` (atomically) if ONNX Runtime matches PyTorch within `atol`; the max |diff|."""
    import onnxruntime as ort

    side = INPUT[name]
    axes = {0: "batch", 2: "height", 3: "width"} if name == "pnet" else {0: "batch"}
    outputs = list(OUTPUTS[: len(net.heads)])
    gen = torch.Generator().manual_seed(0)
    size = (1, 3, 5 * side, 7 * side) if name == "pnet" else (5, 3, side, side)
    x = torch.randn(*size, generator=gen)
    worst = 0.0

    def write(tmp: Path) -> None:
        nonlocal worst
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(tmp), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=outputs, dynamic_axes={"input": axes, **{o: {0: "batch"} for o in outputs}})
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
        with torch.inference_mode():
            worst = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, net(x), strict=True))
        if not worst <= atol:
            raise FerlabError(f"{name}: ONNX differs from PyTorch by {worst:.3g} > {atol:g}; not written")

    atomic_write(path, write)
    return worst


def convert(src: Path, out: Path) -> dict[str, float]:
    """`src`/{pnet,rnet,onet}.pt -> `out`/mtcnn_{name}.onnx; returns the parity of each."""
    return {name: export(load(name, src / f"{name}.pt"), name, out / f"mtcnn_{name}.onnx") for name in STAGES}


if __name__ == "__main__":
    src_dir, out_dir = (Path(a) for a in sys.argv[1:3])
    for stage, diff in convert(src_dir, out_dir).items():
        print(f"{stage}: max |ONNX - PyTorch| = {diff:.2e}")
