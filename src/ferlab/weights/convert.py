"""`python -m ferlab.weights.convert model.hdf5 out.ckpt`: a Keras mini_XCEPTION model (HDF5, read with h5py) as a
ferlab checkpoint.

The checkpoint holds what a training run's does, minus the training state: `state_dict` (`net.*`) and
`hyper_parameters` (num_classes, class_names, and `config` with the `model` and `data` sections that
`ferlab train model=mini_xception data=<data>` composes, at the file's input size and with the Keras model's
input scaling, x / 255 then (x - 0.5) * 2, i.e. mean 0.5 and std 0.5), plus `ferlab_normalization`,
`ferlab_preprocessing` (how faces are cropped for it) and `ferlab_source` (the file, its sha256, its Keras
version). It loads with torch.load(weights_only=True) and rebuilds through ferlab's registries like any other.
This is how src/ferlab/weights/fer2013_mini_xception.ckpt was made (see NOTICE).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError

# the Keras model's preprocess_input(x, v2=True) in ferlab's [0, 1] convention: (x - 0.5) / 0.5
MEAN, STD = [0.5], [0.5]


def stored_config(data: str, model_kwargs: dict[str, Any], size: int, in_chans: int) -> dict[str, Any]:
    """The `model` and `data` sections (and seed) `ferlab train` would store, composed from ferlab's own configs."""
    from omegaconf import OmegaConf

    from ferlab.config.runner import compose_run

    overrides = ["paths.root_dir=.", "model=mini_xception", f"data={data}", f"data.image_size={size}",
                 f"data.in_chans={in_chans}", f"data.mean={MEAN}", f"data.std={STD}",
                 f"model.stem_width={model_kwargs['stem_width']}", f"model.widths={model_kwargs['widths']}",
                 f"model.bn_eps={model_kwargs['bn_eps']}"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run("train", overrides, Path(tmp) / "run")
        plain = OmegaConf.to_container(cfg, resolve=True)
    return {"model": plain["model"], "data": plain["data"], "seed": plain["seed"]}


def keras_checkpoint(h5_path: str | Path, data: str = "fer2013", margin: float = 0.1, note: str = "") -> dict:
    """A ferlab checkpoint (a plain dict of tensors and plain values) of a Keras mini_XCEPTION file."""
    import torch

    from ferlab.data.preprocessing import KEY as PREPROCESSING_KEY
    from ferlab.data.preprocessing import face_record, make_record
    from ferlab.models.keras_h5 import mini_xception_weights, read_keras_h5
    from ferlab.models.pretrained import load_weights
    from ferlab.models.registry import get_builder
    from ferlab.runs.version import version_info

    keras = read_keras_h5(h5_path)
    state, kwargs = mini_xception_weights(keras)
    height, width, channels = keras.input_shape
    if height != width:
        raise FerlabError(f"{h5_path}: input {height}x{width} is not square; ferlab feeds square face crops")
    config = stored_config(data, kwargs, height, channels)
    names = list(config["data"]["class_names"])
    if len(names) != kwargs["num_classes"]:
        raise FerlabError(f"{h5_path} predicts {kwargs['num_classes']} classes, data={data} has {len(names)}: {names}")
    model_kwargs = {k: v for k, v in config["model"].items() if k != "_target_"}
    net = get_builder("mini_xception")(**model_kwargs)
    report = load_weights(net, state, str(h5_path))
    if report.loaded != report.total or report.skipped:
        raise FerlabError(f"{h5_path}: only {report.summary()}")
    digest = hashlib.sha256(Path(h5_path).read_bytes()).hexdigest()
    return {
        "state_dict": {f"net.{k}": v.clone() for k, v in net.state_dict().items()},
        "hyper_parameters": {"num_classes": len(names), "class_names": names, "config": config},
        "ferlab_normalization": {"mean": MEAN * channels, "std": STD * channels},
        PREPROCESSING_KEY: make_record(image_size=height, in_chans=channels, mean=MEAN * channels, std=STD * channels,
                                       color="gray" if channels == 1 else "rgb",
                                       face=face_record("haar", crop_margin=margin, source=f"converted Keras model {Path(h5_path).name}")),
        "ferlab_source": {"file": Path(h5_path).name, "sha256": digest, "keras_version": keras.keras_version,
                          "keras_backend": keras.backend, "converter": "ferlab.weights.convert", "note": note},
        "ferlab_version": version_info(),
        "pytorch_version": torch.__version__.split("+")[0],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ferlab.weights.convert", description=__doc__.split(": ", 1)[1])
    p.add_argument("hdf5", type=Path, help="a Keras mini_XCEPTION model file (model.save(), .hdf5/.h5)")
    p.add_argument("out", type=Path, help="the ferlab checkpoint to write (.ckpt)")
    p.add_argument("--data", default="fer2013", help="the conf/data option whose class names the model predicts")
    p.add_argument("--margin", type=float, default=0.1, help="face crop margin per side, fraction of the box")
    p.add_argument("--note", default="", help="where the file came from (stored in ferlab_source)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.out.exists() and not args.overwrite:
            raise FerlabError(f"{args.out} exists; pass --overwrite to replace it")
        checkpoint = keras_checkpoint(args.hdf5, args.data, args.margin, args.note)
        import torch

        from ferlab.runs.io import atomic_write

        atomic_write(args.out, lambda tmp: torch.save(checkpoint, tmp))
    except FerlabError as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    side = checkpoint["hyper_parameters"]["config"]["data"]["image_size"]
    shape = f"{side}x{side}"
    print(f"wrote {args.out}: mini_xception, {checkpoint['hyper_parameters']['num_classes']} classes, {shape} input")


if __name__ == "__main__":
    main()
