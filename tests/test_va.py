"""Valence/arousal: the CCC loss and the metrics on fixed tensors (by hand and numpy), the masking of rows without
VA, AffectNet's VA columns in both layouts, the cache, batches, and the trust boundary of a stored head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.data.cache import cache_entry, load_or_build
from ferlab.data.datamodule import FERDataModule
from ferlab.data.sources.affectnet import AffectNet
from ferlab.data.writers_wild import write_affectnet, write_affectnet2021
from ferlab.errors import FerlabError
from ferlab.labels import AFFECTNET
from ferlab.lit.heads import Head, stored_head
from ferlab.lit.multitask import MultiTask
from ferlab.lit.va import VAMetrics, ccc, ccc_loss, masked_mse

NAN = float("nan")
# valence p = (1, 2, 3) vs t = (2, 2, 5); arousal p = (0, 0, 1) vs t = (0, 1, 1); a 4th row without VA
PRED = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [-0.7, 0.9]])
TARGET = torch.tensor([[2.0, 0.0], [2.0, 1.0], [5.0, 1.0], [NAN, NAN]])


def test_ccc_loss_by_hand_and_numpy():
    # Lin's CCC, population moments. valence: means 2, 3; var 2/3, 2; cov 1 -> 2 / (2/3 + 2 + 1) = 6/11.
    # arousal: means 1/3, 2/3; var 2/9, 2/9; cov 1/9 -> (2/9) / (2/9 + 2/9 + 1/9) = 2/5
    torch.testing.assert_close(ccc(PRED[:3], TARGET[:3]), torch.tensor([6 / 11, 2 / 5]))
    torch.testing.assert_close(ccc_loss(PRED[:3], TARGET[:3]), torch.tensor(1 - (6 / 11 + 2 / 5) / 2))
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) * 0.5 + 0.2
    lin = [2 * np.mean((p[:, d] - p[:, d].mean()) * (t[:, d] - t[:, d].mean()))
           / (p[:, d].var() + t[:, d].var() + (p[:, d].mean() - t[:, d].mean()) ** 2) for d in range(2)]
    torch.testing.assert_close(ccc(torch.tensor(p), torch.tensor(t)), torch.tensor(lin, dtype=torch.float32))
    assert float(ccc_loss(torch.tensor(t), torch.tensor(t))) == pytest.approx(0, abs=1e-6)  # perfect agreement


def test_metrics_by_hand_and_numpy():
    metrics = VAMetrics()
    metrics.update(PRED, TARGET)  # the 4th row has no VA: left out
    got = metrics.compute()
    # torchmetrics' CCC and PCC divide (co)variances by n - 1: valence cov 3/2, var 1 and 3 -> 3 / (1 + 3 + 1);
    # arousal cov 1/6, var 1/3 and 1/3 -> (1/3) / (1/3 + 1/3 + 1/9)
    want = {"ccc_valence": 3 / 5, "ccc_arousal": 3 / 7, "pcc_valence": math.sqrt(3) / 2, "pcc_arousal": 1 / 2,
            "rmse_valence": math.sqrt(5 / 3), "rmse_arousal": math.sqrt(1 / 3),
            "sagr_valence": 1.0, "sagr_arousal": 2 / 3,  # sign(0) = 0 agrees with 0, not with 1
            "ccc_mean": (3 / 5 + 3 / 7) / 2}
    assert got == pytest.approx(want, rel=1e-5)
    rng = np.random.default_rng(1)
    p, t = rng.normal(size=(64, 2)), rng.normal(size=(64, 2))
    metrics.update(torch.tensor(p[:40]), torch.tensor(t[:40]))  # streamed over two batches
    metrics.update(torch.tensor(p[40:]), torch.tensor(t[40:]))
    got = metrics.compute()
    for d, name in enumerate(("valence", "arousal")):
        x, y = p[:, d], t[:, d]
        cov = np.cov(x, y)  # ddof 1
        assert got[f"ccc_{name}"] == pytest.approx(2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2),
                                                   rel=1e-4)
        assert got[f"pcc_{name}"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-4)
        assert got[f"rmse_{name}"] == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), rel=1e-4)
        assert got[f"sagr_{name}"] == pytest.approx(np.mean(np.sign(x) == np.sign(y)), rel=1e-6)


class _Module:
    """What MultiTask.loss reads of the Classifier."""

    loss_fn = torch.nn.CrossEntropyLoss()


def test_a_row_without_va_changes_neither_va_loss_nor_metrics_but_counts_in_cross_entropy():
    logits = torch.tensor([[2.0, 0.1], [0.3, 0.2], [0.0, 1.0], [3.0, -1.0]])
    y = torch.tensor([0, 1, 1, 1])  # the 4th row, without VA, is badly classified: it weighs on the CE
    task = MultiTask(Head("expr_va", 2, ce_weight=0.5, ccc_weight=2.0, mse_weight=0.25), ["test"])
    va_only = 2.0 * ccc_loss(PRED[:3], TARGET[:3]) + 0.25 * masked_mse(PRED[:3], TARGET[:3])
    torch.testing.assert_close(task.va_loss(PRED, TARGET), va_only)
    ce_all = torch.nn.functional.cross_entropy(logits, y)
    assert not torch.isclose(ce_all, torch.nn.functional.cross_entropy(logits[:3], y[:3]))
    torch.testing.assert_close(task.loss(_Module(), logits, y, PRED, TARGET), va_only + 0.5 * ce_all)
    assert masked_mse(PRED[:3], TARGET[:3]) == pytest.approx((1 + 0 + 4 + 0 + 1 + 0) / 6)
    with_row, without = VAMetrics(), VAMetrics()
    with_row.update(PRED, TARGET)
    without.update(PRED[:3], TARGET[:3])
    assert with_row.compute() == without.compute()
    pred = PRED.clone().requires_grad_(True)  # fewer than 2 annotated rows: no VA loss, finite gradients
    loss = ccc_loss(pred[2:], TARGET[2:])
    loss.backward()
    assert float(loss) == 0 and torch.isfinite(pred.grad).all()


N, SIDE = 60, 24


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_affectnet(tmp_path_factory.mktemp("an") / "affectnet", N, seed=4, size=SIDE, val_fraction=0.2)


@pytest.fixture(scope="module")
def v2021(tmp_path_factory) -> Path:
    return write_affectnet2021(tmp_path_factory.mktemp("an") / "a2021", 40, seed=5, size=SIDE)


def _csv_va(root: Path) -> np.ndarray:
    """(rows, 2) valence/arousal of the kept rows (ids 0-7, positive width) of both lists, -2 as NaN."""
    rows = []
    for name in ("training.csv", "validation.csv"):
        for line in (root / "Manually_Annotated_file_lists" / name).read_text().splitlines():
            f = line.split(",")
            if f[0] != "subDirectory_filePath" and int(f[6]) < 8 and int(f[3]) > 0:
                rows.append([float(f[7]), float(f[8])])
    va = np.array(rows, dtype=np.float32)
    va[va == -2] = np.nan
    return va


def test_release_and_2021_layouts_read_valence_and_arousal(release, v2021, tmp_path):
    data = AffectNet(str(release), image_size=8).read()
    np.testing.assert_array_equal(data.va, _csv_va(release))
    assert data.va.dtype == np.float32 and np.isnan(data.va).any() and data.meta["va_annotated"] == \
        int(np.isfinite(data.va).all(1).sum())
    by_class = {AFFECTNET[c]: np.nanmean(data.va[data.targets == c], 0) for c in (1, 2)}
    assert by_class["happy"][0] > 0.3 and by_class["sad"][0] < -0.3  # derived from the class, plus noise
    notes = sorted((v2021 / "train_set" / "annotations").glob("*_val.npy"), key=lambda p: int(p.name.split("_")[0]))
    assert np.load(notes[0]).dtype.kind == "U"  # numpy strings, as released
    data = AffectNet(str(v2021), image_size=8).read()
    want = [[float(np.load(p)), float(np.load(p.with_name(p.name.replace("_val", "_aro"))))] for p in notes]
    want = np.where(np.array(want) == -2, np.nan, np.array(want, np.float32))
    np.testing.assert_array_equal(data.va[: len(notes)], want)
    root = tmp_path / "bad"
    root.mkdir()
    lists = release / "Manually_Annotated_file_lists"
    (root / "Manually_Annotated_file_lists").mkdir()
    (root / "Manually_Annotated_Images").symlink_to(release / "Manually_Annotated_Images")
    lines = (lists / "training.csv").read_text().splitlines()
    lines[2] = ",".join([*lines[2].split(",")[:8], "1.5"])
    (root / "Manually_Annotated_file_lists" / "training.csv").write_text("\n".join(lines) + "\n")
    (root / "Manually_Annotated_file_lists" / "validation.csv").write_text((lists / "validation.csv").read_text())
    with pytest.raises(FerlabError, match=r"training.csv:3: arousal '1.5' is outside \[-1, 1\] \(-2: not annotated\)"):
        AffectNet(str(root)).read()


def _datamodule(source, va_targets: bool, cache: Path | None = None, **kwargs) -> FERDataModule:
    return FERDataModule(source, name="affectnet", num_classes=8, class_names=list(AFFECTNET), in_chans=3,
                         image_size=SIDE, batch_size=16, split="random", val_fraction=0.2, va_targets=va_targets,
                         cache_dir=None if cache is None else str(cache), **kwargs)


def test_va_is_cached_and_batched_only_when_asked(release, tmp_path):
    source = AffectNet(str(release), image_size=SIDE)
    fresh = load_or_build(source, tmp_path)
    cached = load_or_build(source, tmp_path)  # from the manifest
    np.testing.assert_array_equal(cached.va, fresh.va)
    with np.load(cache_entry(source, tmp_path).manifest) as z:
        assert "va" in z.files and source.settings()["targets"] == ["expression", "valence", "arousal"]
    dm = _datamodule(source, True, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    x, y, va = next(iter(dm.test_dataloader()[0]))
    images, targets = dm.splits["test"]
    torch.testing.assert_close(va, torch.from_numpy(fresh.va)[torch.from_numpy(images.index)][: len(y)],
                               equal_nan=True)
    train = next(iter(dm.train_dataloader()))
    assert len(train) == 3 and train[2].shape == (16, 2) and train[2].dtype == torch.float32
    plain = _datamodule(source, False, tmp_path)
    plain.prepare_data()
    plain.setup("fit")
    assert len(next(iter(plain.train_dataloader()))) == 2  # plain classification batches are unchanged
    assert plain.va_for(images) is not None  # evaluation still finds the VA


def test_va_head_on_data_without_va_is_one_line(make_cfg, capsys):
    from ferlab.config.runner import guarded
    from ferlab.tasks.train import run_train

    cfg = make_cfg("head=expr_va")  # the default synthetic FER2013 data has no valence/arousal
    with pytest.raises(SystemExit):
        guarded(run_train, cfg)  # what the CLI runs
    assert capsys.readouterr().err.strip() == (
        "ferlab: error: data 'synthetic' (SyntheticFer2013) has no valence/arousal targets, which head=va and "
        "head=expr_va train on (AffectNet has them: data=affectnet); use head=classes with this data")
    with pytest.raises(FerlabError, match="invalid config: head=expr_va: augment.mixup/cutmix mix images"):
        run_train(make_cfg("head=expr_va", "augment.mixup.p=0.5"))
    with pytest.raises(FerlabError, match=r"monitor='val/acc' is never logged with head=va"):
        run_train(make_cfg("head=va", "monitor=val/acc"))
    with pytest.raises(FerlabError, match=r"model.num_classes=7 but head=expr_va reads 9 outputs"):
        run_train(make_cfg("head=expr_va", "model.num_classes=7"))


def test_stored_head_is_rebuilt_from_plain_values_only():
    config = {"_target_": "ferlab.lit.heads.Head", "kind": "expr_va", "num_classes": 8, "ce_weight": 1.0}
    head = stored_head(config, 8, "best.ckpt")
    assert head.outputs == 10 and head.describe()["columns"] == {"classes": [0, 8], "valence": 8, "arousal": 9}
    assert head.va_activation == "tanh"  # the default
    assert stored_head(None, 7, "best.ckpt").outputs == 7  # checkpoints from before heads: class logits
    assert stored_head(head.describe(), 8, "x.onnx metadata").kind == "expr_va"  # exported metadata
    out = np.array([[0.5, -0.5, 0.3, -2.0]])
    logits, va = Head("expr_va", 2, va_activation="linear").split(out)
    assert logits.tolist() == [[0.5, -0.5]] and va.tolist() == [[0.3, -2.0]]
    np.testing.assert_allclose(stored_head(Head("expr_va", 2).describe(), 2, "m").split(out)[1], np.tanh([[0.3, -2.0]]))
    torch.testing.assert_close(Head("va", 2).split(torch.tensor([[0.3, -2.0]]))[1], torch.tensor([[0.3, -2.0]]).tanh())
    for bad, message in (({**config, "_target_": "os.system"}, r"refused head._target_ \('os.system' is not"),
                         ({**config, "_args_": ["rm"]}, r"refused head._args_ \(a Hydra instantiation key"),
                         ({**config, "kind": "${oc.env:HOME}"}, r"refused head.kind \(an interpolation"),
                         ({**config, "kind": "regress"}, r"best.ckpt: head.kind: expected one of classes, va, expr_va"),
                         ({**config, "bias": 1}, r"best.ckpt: cannot rebuild the stored head config"),
                         ({**config, "va_activation": "relu"}, r"head.va_activation: expected one of tanh, linear")):
        with pytest.raises(FerlabError, match=message):
            stored_head(bad, 8, "best.ckpt")


def test_stored_head_and_tta_are_rebuilt_by_one_helper_with_one_wording():
    from ferlab.analysis.tta import TARGET, TestTimeAugment, stored_tta
    from ferlab.runs.stored import build_stored

    assert stored_tta({"_target_": TARGET, "mode": "flip"}, "best.ckpt").mode == "flip"
    for bad, message in (({"_target_": "os.system"}, r"refused tta._target_ \('os.system' is not ferlab's test-time"),
                         ({"_target_": TARGET, "bias": 1}, r"best.ckpt: cannot rebuild the stored tta config")):
        with pytest.raises(FerlabError, match=message):
            stored_tta(bad, "best.ckpt")
    built = build_stored(TestTimeAugment, TARGET, {"_target_": TARGET, "mode": "none"}, "tta", "x", "tta")
    assert built.mode == "none"


def test_predicted_faces_carry_va_in_json_and_on_the_annotated_image():
    from ferlab.infer.draw import annotate
    from ferlab.infer.predictor import Face

    both = Face([10, 10, 60, 60], np.array([0.25, 0.75]), "happy", 0.75, (0.61, -0.2))
    assert both.caption() == "happy 0.75 V+0.61 A-0.20"
    assert both.as_dict(["sad", "happy"]) == {"box": [10, 10, 60, 60], "label": "happy", "prob": 0.75,
                                             "probs": {"sad": 0.25, "happy": 0.75}, "valence": 0.61, "arousal": -0.2,
                                             "score": 1.0}
    va_only = Face([10, 10, 60, 60], np.zeros(0), "", float("nan"), (0.61, -0.2))
    assert va_only.caption() == "V+0.61 A-0.20"
    assert va_only.as_dict([]) == {"box": [10, 10, 60, 60], "valence": 0.61, "arousal": -0.2, "score": 1.0}
    frame = np.zeros((200, 300, 3), np.uint8)
    for face, names in ((both, ["sad", "happy"]), (va_only, [])):
        face.box = [10, 80, 60, 60]
        drawn = annotate(frame, [face], names)
        assert drawn[:79].any() and not frame.any()  # the caption above the box; the frame itself untouched


@pytest.mark.timeout(30)
def test_decoding_processes_stop_whatever_sigterm_handler_the_parent_left(v2021):
    """Pool.terminate() stops the decode workers with SIGTERM: a Python handler inherited from the parent (a run's
    pre-emption handler, left by an earlier test or a training run in this process) must not keep them alive."""
    import signal

    from ferlab.data import store

    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with store.staging(None, workers=2):
            data = AffectNet(str(v2021), image_size=8).read()  # hung forever in Pool.join() before the fix
    finally:
        signal.signal(signal.SIGTERM, before)
    assert len(data.targets) == 40
