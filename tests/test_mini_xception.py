"""mini-Xception and its Keras conversion: a Keras-layout HDF5 file written here with h5py (random weights, layers
in a scrambled order) converts to a net whose outputs equal an independent NumPy forward pass with Keras' semantics
(TensorFlow 'same' padding, odd padding bottom/right), files that do not fit are one line, and the built-in FER2013
checkpoint loads weights-only, labels a real smiling face, exports, and is what init_from=builtin:... loads."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.errors import FerlabError
from ferlab.models.registry import create_model
from ferlab.weights import BUILTINS, builtin_path, resolve_checkpoint

h5py = pytest.importorskip("h5py")  # the infer and dev extras install it

# a small mini_XCEPTION: 26 px -> stem 22 -> 11 (pool pads 0/1) -> 6 (1/1) -> 3 (0/1)
SIDE, STEM, WIDTHS, CLASSES, EPS = 26, 4, (6, 8, 10), 5, 1e-3


def keras_spec(stem: int = STEM, widths: tuple[int, ...] = WIDTHS, classes: int = CLASSES) -> list[dict]:
    """mini_XCEPTION's layers as Keras 2 records them (names numbered per class in creation order)."""
    counts: dict[str, int] = {}
    layers: list[dict] = []

    def add(kind: str, inputs: list[str], **config) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        name = config.pop("name", None) or f"{kind.lower()}_{counts[kind]}"
        config = {"name": name, "data_format": "channels_last", **config}
        layers.append({"class_name": kind, "name": name, "config": config,
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []})
        return name

    def conv(x: str, filters: int, k: int, stride: int = 1, padding: str = "same", bias: bool = False) -> str:
        return add("Conv2D", [x], filters=filters, kernel_size=[k, k], strides=[stride] * 2, padding=padding,
                   use_bias=bias, activation="linear", dilation_rate=[1, 1])

    def bn(x: str) -> str:
        return add("BatchNormalization", [x], axis=-1, epsilon=EPS, momentum=0.99, center=True, scale=True)

    def sep(x: str, filters: int) -> str:
        return add("SeparableConv2D", [x], filters=filters, kernel_size=[3, 3], strides=[1, 1], padding="same",
                   use_bias=False, activation="linear", depth_multiplier=1, dilation_rate=[1, 1])

    x = add("InputLayer", [], name="input_1", batch_input_shape=[None, SIDE, SIDE, 1])
    for _ in range(2):
        x = add("Activation", [bn(conv(x, stem, 3, padding="valid"))], activation="relu")
    for width in widths:
        residual = bn(conv(x, width, 1, stride=2))  # created first, as in cnn.py
        y = bn(sep(add("Activation", [bn(sep(x, width))], activation="relu"), width))
        y = add("MaxPooling2D", [y], pool_size=[3, 3], strides=[2, 2], padding="same")
        x = add("Add", [y, residual])
    x = add("GlobalAveragePooling2D", [conv(x, classes, 3, bias=True)])
    add("Activation", [x], activation="softmax", name="predictions")
    return layers


def keras_arrays(layers: list[dict], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random weights in Keras' layouts, batch norm statistics included."""
    rng = np.random.default_rng(seed)
    shapes = {}  # channels entering each layer
    by_name = {layer["name"]: layer for layer in layers}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for layer in layers:
        c, kind, name = layer["config"], layer["class_name"], layer["name"]
        source = layer["inbound_nodes"][0][0][0] if layer["inbound_nodes"] else None
        cin = shapes.get(source, 1)
        out = c.get("filters", cin)
        if kind == "Conv2D":
            k = c["kernel_size"][0]
            arrays[name] = {"kernel": rng.normal(0, (k * k * cin) ** -0.5, (k, k, cin, out))}
            if c["use_bias"]:
                arrays[name]["bias"] = rng.normal(0, 0.5, out)
        elif kind == "SeparableConv2D":
            arrays[name] = {"depthwise_kernel": rng.normal(0, 1 / 3, (3, 3, cin, 1)),
                            "pointwise_kernel": rng.normal(0, cin ** -0.5, (1, 1, cin, out))}
        elif kind == "BatchNormalization":
            arrays[name] = {"gamma": rng.uniform(0.5, 1.5, cin), "beta": rng.normal(0, 0.3, cin),
                            "moving_mean": rng.normal(0, 0.3, cin), "moving_variance": rng.uniform(0.3, 2, cin)}
        shapes[name] = out
        assert by_name[name] is layer
    return {n: {k: v.astype(np.float32) for k, v in a.items()} for n, a in arrays.items()}


def write_keras_h5(path: Path, layers: list[dict], arrays: dict[str, dict[str, np.ndarray]], seed: int = 0) -> Path:
    """An HDF5 file in the layout Keras 2's model.save() writes, its layer list in a scrambled order."""
    listed = layers[:]
    random.Random(seed).shuffle(listed)  # the reader must follow the graph, not the order
    config = {"class_name": "Model", "config": {"name": "model_1", "layers": listed,
                                                 "input_layers": [["input_1", 0, 0]],
                                                 "output_layers": [["predictions", 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "2.0.5", "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [layer["name"].encode() for layer in layers]
        for layer in layers:
            group = weights.create_group(layer["name"])
            mine = arrays.get(layer["name"], {})
            group.attrs["weight_names"] = [f"{layer['name']}_1/{k}:0".encode() for k in mine]
            for k, a in mine.items():
                group.create_dataset(f"{layer['name']}_1/{k}:0", data=a)
    return path


# --- the reference: Keras semantics typed out in NumPy (NHWC, float64) ---

def tf_same(n: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2  # TensorFlow: the odd pixel goes after


def windows(x: np.ndarray, k: int, s: int, padding: str, fill: float, symmetric: bool = False):
    """(u, v, view) for every kernel tap over a padded (N, H, W, C) map."""
    if padding == "same":
        rows, cols = ((k // 2,) * 2,) * 2 if symmetric else (tf_same(x.shape[1], k, s), tf_same(x.shape[2], k, s))
        x = np.pad(x, ((0, 0), rows, cols, (0, 0)), constant_values=fill)
    h, w = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    for u in range(k):
        for v in range(k):
            yield u, v, x[:, u:u + (h - 1) * s + 1:s, v:v + (w - 1) * s + 1:s, :]


def reference_logits(x: np.ndarray, layers: list[dict], arrays: dict, symmetric_pool: bool = False) -> np.ndarray:
    """The Keras graph evaluated layer by layer; returns the pooled logits before softmax."""
    values: dict[str, np.ndarray] = {}
    pending = layers[:]
    while pending:
        layer = next(la for la in pending if all(i[0] in values for node in la["inbound_nodes"] for i in node))
        pending.remove(layer)
        c, kind, a = layer["config"], layer["class_name"], arrays.get(layer["name"], {})
        ins = [values[i[0]] for node in layer["inbound_nodes"] for i in node]
        if kind == "InputLayer":
            out = x
        elif kind == "Conv2D":
            k, s = c["kernel_size"][0], c["strides"][0]
            out = sum(view @ a["kernel"][u, v] for u, v, view in windows(ins[0], k, s, c["padding"], 0.0))
            out = out + a["bias"] if "bias" in a else out
        elif kind == "SeparableConv2D":
            depth = sum(view * a["depthwise_kernel"][u, v, :, 0] for u, v, view in windows(ins[0], 3, 1, "same", 0.0))
            out = depth @ a["pointwise_kernel"][0, 0]
        elif kind == "BatchNormalization":
            out = (ins[0] - a["moving_mean"]) / np.sqrt(a["moving_variance"] + c["epsilon"]) * a["gamma"] + a["beta"]
        elif kind == "MaxPooling2D":
            out = np.max([view for _, _, view in windows(ins[0], 3, 2, "same", -np.inf, symmetric_pool)], axis=0)
        elif kind == "Add":
            out = ins[0] + ins[1]
        elif kind == "GlobalAveragePooling2D":
            out = ins[0].mean((1, 2))
        else:  # Activation
            out = np.maximum(ins[0], 0) if c["activation"] == "relu" else ins[0]  # softmax: logits kept
        values[layer["name"]] = out.astype(np.float64)
    return values["predictions"]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    layers = keras_spec()
    arrays = keras_arrays(layers)
    return write_keras_h5(tmp_path_factory.mktemp("keras") / "mini.hdf5", layers, arrays), layers, arrays


def test_conversion_equals_the_keras_semantics_reference(keras_file):
    path, layers, arrays = keras_file
    net = create_model("mini_xception", in_chans=1, num_classes=CLASSES, stem_width=STEM, widths=list(WIDTHS),
                       pretrained=str(path)).eval()
    assert net.load_report.loaded == net.load_report.total and not net.load_report.skipped
    x = np.random.default_rng(1).uniform(-1, 1, (4, SIDE, SIDE, 1))
    expected = reference_logits(x, layers, arrays)
    with torch.no_grad():
        ours = net(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)
    # the check can fail: PyTorch's symmetric pool padding moves the logits far beyond the tolerance
    assert np.abs(reference_logits(x, layers, arrays, symmetric_pool=True) - expected).max() > 1e-2


def test_the_linear_head_is_the_keras_classifier_conv_then_global_pooling():
    torch.manual_seed(0)
    net = create_model("mini_xception", in_chans=1, num_classes=7).eval()
    assert sum(p.numel() for p in net.parameters()) == 56_951  # Keras' summary: 58,423 with the BN statistics
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        fmap = net.blocks(net.stem(x))  # (3, 128, 3, 3)
        kernel = net.head.weight.view(7, 128, 3, 3)
        conv_then_gap = torch.nn.functional.conv2d(fmap, kernel, net.head.bias, padding=1).mean((2, 3))
        torch.testing.assert_close(net(x), conv_then_gap, atol=1e-5, rtol=1e-5)


def test_files_that_do_not_fit_are_one_line(keras_file, tmp_path):
    from ferlab.models.keras_h5 import mini_xception_weights, read_keras_h5

    path, layers, arrays = keras_file
    no_bn = [la for la in copy.deepcopy(layers) if la["name"] != "batchnormalization_3"]  # module 1's shortcut BN
    for la in no_bn:
        for node in la["inbound_nodes"]:
            for i in node:
                i[0] = "conv2d_3" if i[0] == "batchnormalization_3" else i[0]
    bad = {**arrays, "conv2d_1": {"kernel": arrays["conv2d_1"]["kernel"][:2]}}
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_group("conv2d_1")
    cases = [
        (write_keras_h5(tmp_path / "no_bn.hdf5", no_bn, arrays), "module 1's shortcut ends after conv2d_3 where a "
         "BatchNormalization layer was expected"),
        (write_keras_h5(tmp_path / "bad.hdf5", layers, bad), "does not fit MiniXception: stem.0.weight is 4x1x3x3, 4x1x2x3 in the source"),
        (weights_only, "has no model_config: a weights-only file"),
        (tmp_path / "missing.hdf5", "Keras model not found"),
    ]
    (tmp_path / "text.hdf5").write_text("not hdf5")
    cases.append((tmp_path / "text.hdf5", "cannot be read as a Keras HDF5 model"))
    for file, match in cases:
        with pytest.raises(FerlabError, match=match) as err:
            create_model("mini_xception", num_classes=CLASSES, stem_width=STEM, widths=list(WIDTHS), pretrained=str(file))
        assert "\n" not in str(err.value) and str(file) in str(err.value)
    with pytest.raises(FerlabError, match="set model.bn_eps=0.001"):
        create_model("mini_xception", num_classes=CLASSES, stem_width=STEM, widths=list(WIDTHS), bn_eps=1e-5,
                     pretrained=str(path))
    assert mini_xception_weights(read_keras_h5(path))[1]["widths"] == list(WIDTHS)


def test_the_builtin_checkpoint_loads_weights_only_with_its_records():
    from ferlab.checkpoints.restore import restore
    from ferlab.labels import FER2013

    path = builtin_path("fer2013_mini_xception")
    assert path == resolve_checkpoint("builtin:fer2013_mini_xception") and path.with_name("NOTICE").is_file()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    record = checkpoint["ferlab_preprocessing"]  # Haar crops with a 10% margin, not aligned, 64x64 gray in [-1, 1]
    assert (record["image_size"], record["in_chans"], record["color"], record["mean"], record["std"]) == (
        64, 1, "gray", [0.5], [0.5])
    assert (record["face"]["detector"], record["face"]["align"], record["face"]["crop_margin"]) == ("haar", False, 0.1)
    assert checkpoint["ferlab_source"]["sha256"].startswith("59534287fdfb125e")
    restored = restore("builtin:fer2013_mini_xception")
    assert (restored.class_names, restored.image_size, restored.in_chans) == (list(FER2013), 64, 1)
    assert (restored.mean, restored.std) == ([0.5], [0.5]) and restored.config["data"]["name"] == "fer2013"
    with pytest.raises(FerlabError, match=r"^unknown built-in checkpoint builtin:nope; known: builtin:fer2013_mini_xception"):
        resolve_checkpoint("builtin:nope")
    assert list(BUILTINS) == ["fer2013_mini_xception"]


def test_predict_without_a_checkpoint_labels_a_real_smiling_face_happy(tmp_path, capsys):
    import cv2
    from skimage import data

    from ferlab.tasks.predict import run_predict
    from tests.conftest import compose_cfg

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), data.astronaut()[:, :, ::-1])
    cfg = compose_cfg(tmp_path, [f"input={photo}", "progress=false", "annotate=false"], config_name="predict")
    assert cfg.ckpt_path == "builtin:fer2013_mini_xception"
    result = run_predict(cfg)
    doc = json.loads(Path(result["files"][1]).read_text())
    (face,) = doc["predictions"][0]["faces"]
    assert face["label"] == "happy" and face["prob"] > 0.9, face  # Eileen Collins smiles
    err = capsys.readouterr().err
    assert "model: builtin:fer2013_mini_xception: mini-Xception" in err and "synthetic" not in err


def test_builtin_exports_into_the_run_dir_and_init_from_resolves_it(tmp_path):
    from ferlab.checkpoints.init_from import init_weights, resolve_init_from
    from ferlab.tasks.export import run_export
    from tests.conftest import compose_cfg

    for fmt in ("onnx", "torchscript"):
        cfg = compose_cfg(tmp_path / fmt, ["ckpt_path=builtin:fer2013_mini_xception", f"format={fmt}"], "export")
        result = run_export(cfg)
        assert Path(result["path"]).parent == tmp_path / fmt / "run" and result["max_abs_diff"] <= 1e-4
    cfg = compose_cfg(tmp_path / "train", ["model=mini_xception", "init_from=builtin:fer2013_mini_xception"])
    path = resolve_init_from(cfg)
    assert path == builtin_path("fer2013_mini_xception")
    net = create_model("mini_xception", in_chans=1, num_classes=8)  # FER+: the head is re-initialised
    report = init_weights(net, path)
    assert report.loaded == report.total - 2 and set(report.skipped) == {"head"}
