"""Cross-dataset evaluation: classes matched by name (synonyms), images of classes the model lacks dropped and
counted, predictions of classes the data lacks counted as errors, scores as scikit-learn's; end to end a
RAF-DB-layout checkpoint evaluated on an AffectNet-layout set with contempt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from ferlab.analysis.cross_dataset import cross_section, map_sets, match_classes
from ferlab.analysis.metrics import classification_report
from ferlab.data.imageset import ImageSet
from ferlab.data.writers_wild import write_affectnet2021, write_rafdb
from ferlab.errors import FerlabError
from ferlab.labels import AFFECTNET, FER5, FER2013, FERPLUS, RAFDB
from tests.conftest import compose_cfg


def test_classes_match_by_name_through_synonyms():
    cmap = match_classes(list(RAFDB), list(AFFECTNET), "rafdb", "affectnet")
    # AffectNet: neutral happy sad surprise fear disgust anger contempt -> RAF-DB: surprise fear disgust
    # happiness sadness anger neutral
    assert cmap.to_model == [6, 3, 4, 0, 1, 2, 5, None]
    assert cmap.data_only == ["contempt"] and cmap.model_only == []
    assert ("happiness", "happy") in cmap.shared and ("sadness", "sad") in cmap.shared and len(cmap.shared) == 7
    assert match_classes(list(RAFDB), list(FER2013), "rafdb", "fer2013").to_model == [5, 2, 1, 3, 4, 0, 6]
    fer5 = match_classes(list(FER5), list(FER2013), "fer5", "fer2013")  # "Angry" -> "angry": case too
    assert fer5.data_only == ["disgust", "fear"] and len(fer5.shared) == 5
    assert match_classes(list(FERPLUS), list(RAFDB), "ferplus", "rafdb").model_only == ["contempt"]
    with pytest.raises(FerlabError, match=r"^cross-dataset eval: the model's classes \(rafdb: surprise, fear, "
                                          r".*neutral\) and the data's \(folder: cat, dog, happy\) share 1 by name; "
                                          r"at least 4 are needed"):
        match_classes(list(RAFDB), ["cat", "dog", "happy"], "rafdb", "folder")
    with pytest.raises(FerlabError, match=r"'angry' and 'anger' are the same expression"):
        match_classes(list(RAFDB), ["angry", "anger", "happy", "sad", "fear"], "rafdb", "folder")


def test_dropped_rows_and_predictions_of_missing_classes_score_as_sklearn():
    # a FER+ model (8 classes, contempt included) on RAF-DB-like data (7 classes) whose targets are given by name
    cmap = match_classes(list(FERPLUS), [*RAFDB, "contempt"][:7] + ["unicorn"], "ferplus", "weird")
    assert cmap.data_only == ["unicorn"] and cmap.model_only == ["contempt"]
    names = [*RAFDB, "unicorn"]
    rng = np.random.default_rng(3)
    data_targets = torch.from_numpy(rng.integers(0, 8, 60))
    images = ImageSet(np.zeros((60, 1, 2, 2), np.uint8))
    sets, dropped = map_sets({"test": (images, data_targets)}, cmap)
    kept = data_targets != 7
    assert dropped == {"test": {"unicorn": int((~kept).sum())}} and len(sets["test"][0]) == int(kept.sum())
    model_targets = sets["test"][1]
    want = [FERPLUS.index(names[int(t)]) for t in data_targets[kept]]  # by name, by hand
    assert model_targets.tolist() == want and np.array_equal(sets["test"][0].index, np.flatnonzero(kept.numpy()))
    preds = torch.from_numpy(rng.integers(0, 8, len(want)))  # model ids: contempt (7) predictions are errors
    preds[:3] = FERPLUS.index("contempt")
    reports = {"test": classification_report(preds, model_targets, list(FERPLUS))}
    section = cross_section(cmap, dropped, reports)
    r, y, p = reports["test"], np.array(want), preds.numpy()
    shared = sorted(set(y) | set(p) - {FERPLUS.index("contempt")})  # shared classes occurring in the split
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert r["macro"][name] == pytest.approx(fn(y, p, labels=shared, average="macro", zero_division=0))
        assert r["weighted"][name] == pytest.approx(fn(y, p, labels=shared, average="weighted", zero_division=0))
    split = section["splits"]["test"]
    assert split["predicted_missing_classes"] == int((p == FERPLUS.index("contempt")).sum()) >= 3
    assert split["dropped"] == int((~kept).sum()) and split["images"] == len(want)


@pytest.fixture(scope="module")
def rafdb_run(tmp_path_factory) -> dict:
    from ferlab.tasks.train import run_train

    tmp = tmp_path_factory.mktemp("cross")
    root = write_rafdb(tmp / "rafdb", 90, seed=1, size=32)
    return run_train(compose_cfg(tmp, [
        "data=rafdb", f"data.source.root={root}", "data.image_size=32", "data.batch_size=16", "model.width=8",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0", "test=false",
        "logger=none", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]))


def test_rafdb_checkpoint_on_affectnet_layout_with_contempt(rafdb_run, tmp_path):
    from ferlab.analysis.common import load
    from ferlab.data.sources.affectnet import AffectNet
    from ferlab.tasks.evaluate import run_eval

    data = write_affectnet2021(tmp_path / "affectnet", 60, seed=2, size=32, val_fraction=0.4)
    ckpt = rafdb_run["checkpoints"]["last"]
    args = [f"ckpt_path={ckpt}", "data=affectnet", f"data.source.root={data}", "tensorboard=false"]
    report = run_eval(compose_cfg(tmp_path / "e", args, config_name="eval"))
    out = Path(report["output_dir"])
    assert out == Path(ckpt).parents[1] / "eval" / "last-data_affectnet"
    cross = json.loads((out / "report.json").read_text())["cross_dataset"]
    test_ids = AffectNet(str(data), image_size=8).read()
    test_ids = test_ids.targets[test_ids.split == 2]  # AffectNet's validation list is the test split
    contempt = int((test_ids == AFFECTNET.index("contempt")).sum())
    assert contempt >= 2 and cross["data_only"] == ["contempt"] and cross["model_only"] == []
    assert cross["splits"]["test"] == {"images": len(test_ids) - contempt, "dropped": contempt,
                                       "dropped_by_class": {"contempt": contempt}, "predicted_missing_classes": 0}
    assert {"model": "happiness", "data": "happy"} in cross["shared"] and len(cross["shared"]) == 7
    line = f"cross-dataset: model rafdb -> data affectnet, 7 shared classes, {contempt} images dropped (contempt)"
    assert line in (out / "report.md").read_text()
    loaded = load(compose_cfg(tmp_path / "p", args, config_name="eval"), by_name=True)  # the network, predicted here
    dm = loaded.datamodule
    images, targets = dm.splits["test"]
    with torch.no_grad():
        preds = torch.cat([loaded.restored.net(dm.transform(x, train=False)) for x in images.split(16)]).argmax(1)
    by_name = {"happy": "happiness", "sad": "sadness"}
    names = [by_name.get(AFFECTNET[int(t)], AFFECTNET[int(t)]) for t in targets]
    keep = [n != "contempt" for n in names]
    y = np.array([RAFDB.index(n) for n, k in zip(names, keep, strict=True) if k])
    p = preds.numpy()[keep]
    got = report["splits"]["test"]
    present = sorted(set(y) | set(p))
    assert got["num_images"] == len(y) and got["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert got["macro"]["f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro", zero_division=0))
    assert got["weighted"]["f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0))
    assert np.array_equal(np.array(got["confusion_matrix"]).sum(1), np.bincount(y, minlength=7))
