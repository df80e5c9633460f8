"""FER+: the four label modes on hand-made vote rows with known answers and against a literal port of the
reference code, both vote sources (fer2013new.csv and label.csv folders), train targets per mode, bad files."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ferlab.data.datamodule import FERDataModule
from ferlab.data.sources.ferplus import LABEL_MODES, FerPlus, ferplus_targets
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
from ferlab.data.writers import ferplus_votes, write_ferplus_csv, write_ferplus_folders
from ferlab.errors import FerlabError
from ferlab.labels import FERPLUS

# votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF
ROWS = {
    "unanimous": [10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "six_four": [6, 4, 0, 0, 0, 0, 0, 0, 0, 0],
    "tie": [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
    "three_way": [4, 3, 3, 0, 0, 0, 0, 0, 0, 0],
    "all_ones": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "too_many_ties": [3, 2, 2, 2, 1, 0, 0, 0, 0, 0],
    "mostly_unknown": [2, 0, 0, 0, 0, 0, 0, 0, 8, 0],
    "tie_with_unknown": [5, 0, 0, 0, 0, 0, 0, 0, 5, 0],
    "single_votes_zeroed": [0, 7, 0, 0, 0, 0, 0, 2, 0, 1],
    "nf_in_the_top": [0, 0, 0, 0, 4, 0, 0, 3, 0, 3],
}
N, H, SU, SA, A, C = (FERPLUS.index(c) for c in ("neutral", "happiness", "surprise", "sadness", "anger", "contempt"))
# row -> mode -> kept distribution as {class: share}, or None when the row is dropped
EXPECTED = {
    "unanimous": dict.fromkeys(LABEL_MODES, {N: 1.0}),
    "six_four": {"majority": {N: 1.0}, "probability": {N: 0.6, H: 0.4}, "crossentropy": {N: 0.6, H: 0.4},
                 "multi_target": {N: 0.6, H: 0.4}},
    "tie": {"majority": None, "probability": {N: 0.5, H: 0.5}, "crossentropy": {N: 0.5, H: 0.5},
            "multi_target": {N: 0.5, H: 0.5}},
    "three_way": {"majority": None, "probability": {N: 0.4, H: 0.3, SU: 0.3}, "crossentropy": {N: 0.4, H: 0.3, SU: 0.3},
                  "multi_target": {N: 0.4, H: 0.3, SU: 0.3}},
    "all_ones": dict.fromkeys(LABEL_MODES),
    "too_many_ties": dict.fromkeys(LABEL_MODES),  # ce: 4 classes tie in; multi: only 3/9 over 30%
    "mostly_unknown": dict.fromkeys(LABEL_MODES),
    "tie_with_unknown": {"majority": None, "probability": None, "crossentropy": None, "multi_target": {N: 1.0}},
    "single_votes_zeroed": dict.fromkeys(LABEL_MODES, {H: 1.0}),
    "nf_in_the_top": {"majority": None, "probability": {A: 4 / 7, C: 3 / 7}, "crossentropy": {A: 4 / 7, C: 3 / 7},
                      "multi_target": {A: 4 / 7, C: 3 / 7}},
}


def reference_process(raw: list[float], mode: str) -> list[float] | None:
    """The FER+ reference `_process_data` plus its keep rule, ported line by line: the oracle."""
    raw, size = list(raw), len(raw)
    unknown = [0.0] * size
    unknown[-2] = 1.0
    raw = [0.0 if r < 1.0 + sys.float_info.epsilon else r for r in raw]
    total, emotion = sum(raw), [0.0] * size
    if mode == "majority":
        if max(raw) > 0.5 * total:
            emotion[int(np.argmax(raw))] = max(raw)
        else:
            emotion = unknown
    elif mode in ("probability", "crossentropy"):
        part, count, valid = 0, 0, True
        while part < 0.75 * total and count < 3 and valid:
            peak = max(raw)
            for i in range(size):
                if raw[i] == peak:
                    emotion[i], raw[i] = peak, 0
                    part += emotion[i]
                    count += 1
                    if i >= 8:
                        valid = False
                        if sum(emotion) > peak:
                            emotion[i] = 0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * total or count > 3:
            emotion = unknown
    else:
        emotion = [r if r >= 0.3 * total else 0.0 for r in raw]
        if sum(emotion) <= 0.5 * total:
            emotion = unknown
    emotion = [e / sum(emotion) for e in emotion]
    if int(np.argmax(emotion)) >= 8:
        return None
    return [e / sum(emotion[:-2]) for e in emotion[:-2]]


@pytest.mark.parametrize("mode", LABEL_MODES)
def test_label_modes_on_hand_made_rows(mode):
    keep, dist = ferplus_targets(np.array(list(ROWS.values()), dtype=np.float32), mode)
    for i, name in enumerate(ROWS):
        want = EXPECTED[name][mode]
        assert keep[i] == (want is not None), (name, mode)
        if want is not None:
            expected = np.zeros(8)
            for c, share in want.items():
                expected[c] = share
            np.testing.assert_allclose(dist[i], expected, atol=1e-6, err_msg=f"{name} {mode}")
            assert reference_process(ROWS[name], mode) == pytest.approx(expected.tolist())
        else:
            assert reference_process(ROWS[name], mode) is None


@pytest.mark.parametrize("mode", LABEL_MODES)
def test_vectorized_rules_match_the_reference_loop_on_random_votes(mode):
    rng = np.random.default_rng(3)
    votes = rng.multinomial(10, rng.dirichlet(np.full(10, 0.4), size=1500))  # (1500, 10), many ties
    keep, dist = ferplus_targets(votes.astype(np.float32), mode)
    for i, row in enumerate(votes.tolist()):
        ref = reference_process(row, mode)
        assert keep[i] == (ref is not None), (row, mode)
        if ref is not None:
            np.testing.assert_allclose(dist[i], ref, atol=1e-6)
    assert 0.2 < keep.mean() < 1.0  # the random rows exercise both outcomes


@pytest.fixture(scope="module")
def ferplus_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ferplus")
    images, labels, usage = make_dataset(SynthSpec(num_images=240, seed=6), cover_classes=True)
    votes, names = ferplus_votes(labels, seed=6, not_face=0.03)
    fer = write_fer2013_csv(root / "fer2013.csv", images, labels, usage)
    new = write_ferplus_csv(root / "fer2013new.csv", votes, usage, names)
    folders = write_ferplus_folders(root / "repo", images, votes, usage, names)
    return {"fer": fer, "new": new, "folders": folders, "votes": votes, "names": names, "usage": usage, "images": images}


def _module(source, tmp_path, **kw) -> FERDataModule:
    dm = FERDataModule(source, name="ferplus", num_classes=8, class_names=FERPLUS, in_chans=1, image_size=48,
                       batch_size=64, cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("mode", LABEL_MODES)
def test_reader_applies_the_mode_to_train_and_majority_to_val_and_test(ferplus_files, tmp_path, mode):
    f = ferplus_files
    dm = _module(FerPlus(str(f["fer"]), ferplus_path=str(f["new"]), label_mode=mode), tmp_path)
    face = np.array([bool(n) for n in f["names"]])
    train = (f["usage"] == "Training") & face
    keep_t, dist_t = ferplus_targets(f["votes"][train].astype(np.float32), mode)
    keep_v, dist_v = ferplus_targets(f["votes"][(f["usage"] == "PublicTest") & face].astype(np.float32), "majority")
    assert dm.sizes["train"] == keep_t.sum() and dm.sizes["val"] == keep_v.sum()
    assert dm.meta["kept_rows"]["train"] == keep_t.sum() and dm.meta["not_face_rows"] == (~face).sum() > 0
    assert dm.meta["label_mode"] == mode and sum(dm.meta["dropped_rows"].values()) > 0
    np.testing.assert_array_equal(dm.splits["val"][1].numpy(), dist_v[keep_v].argmax(1))
    np.testing.assert_array_equal(dm.splits["train"][0][:].numpy()[:, 0], f["images"][train][keep_t])
    x, y = next(iter(dm.train_dataloader()))
    y = dm.train_targets(y)  # what training_step gets (probability: a class drawn from each row)
    if mode in ("crossentropy", "multi_target"):
        assert y.dtype == torch.float32 and y.shape == (64, 8)
        torch.testing.assert_close(y.sum(1), torch.ones(64))
    else:
        assert y.dtype == torch.int64 and y.shape == (64,)
    assert next(iter(dm.val_dataloader()))[1].dtype == torch.int64


def test_probability_mode_draws_a_new_class_each_time(ferplus_files, tmp_path):
    f = ferplus_files
    dm = _module(FerPlus(str(f["fer"]), ferplus_path=str(f["new"]), label_mode="probability"), tmp_path)
    ds = dm.train_dataloader().dataset
    mixed = int(np.flatnonzero((dm.train_soft.numpy() > 0).sum(1) >= 2)[0])  # an image with a split vote
    draws = torch.stack([dm.train_targets(ds.__getitems__([mixed] * 200)[1]) for _ in range(3)]).flatten()
    allowed = set(torch.nonzero(dm.train_soft[mixed]).flatten().tolist())
    assert set(draws.tolist()) == allowed
    share = (draws == draws.mode().values).float().mean().item()
    assert abs(share - dm.train_soft[mixed].max().item()) < 0.1


def test_label_csv_folders_give_the_same_data_as_fer2013new(ferplus_files, tmp_path):
    f = ferplus_files
    a = _module(FerPlus(str(f["fer"]), ferplus_path=str(f["new"]), label_mode="crossentropy", test="both"), tmp_path)
    b = _module(FerPlus(label_root=str(f["folders"]), label_mode="crossentropy", test="both"), tmp_path)
    assert a.sizes == b.sizes and set(a.test_splits) == {"test_public", "test_private"}
    for name in ("train", "test_public", "test_private"):
        torch.testing.assert_close(a.splits[name][0][:], b.splits[name][0][:])
        torch.testing.assert_close(a.splits[name][1], b.splits[name][1])
    torch.testing.assert_close(a.train_soft, b.train_soft)


def _rewrite(path, line: int, edit):
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case, expected", [
    ("short", r"fer2013new.csv: 239 vote rows but .*fer2013.csv has 240"),
    ("usage", r"fer2013new.csv:3: Usage 'PrivateTest' but .*fer2013.csv:3 says 'Training': the vote rows do not line up"),
    ("column", r"fer2013new.csv: missing column\(s\) \['NF'\]; expected .* found"),
    ("vote", r"fer2013new.csv:5: contempt votes 'x' is not an integer"),
])
def test_bad_vote_files_name_file_and_line(ferplus_files, tmp_path, case, expected):
    new = tmp_path / "fer2013new.csv"
    new.write_text(ferplus_files["new"].read_text())
    if case == "short":
        new.write_text("\n".join(new.read_text().splitlines()[:-1]) + "\n")
    elif case == "usage":
        _rewrite(new, 3, lambda s: s.replace("Training", "PrivateTest", 1))
    elif case == "column":
        _rewrite(new, 1, lambda s: s.replace(",NF", ",nf"))
    else:
        _rewrite(new, 5, lambda s: ",".join(s.split(",")[:9] + ["x"] + s.split(",")[10:]))
    with pytest.raises(FerlabError, match=expected):
        FerPlus(str(ferplus_files["fer"]), ferplus_path=str(new)).read()


def test_label_csv_naming_a_missing_image_is_an_error(ferplus_files, tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(ferplus_files["folders"], root)
    _rewrite(root / "FER2013Valid" / "label.csv", 2, lambda s: "fer9999999.png" + s[s.index(","):])
    with pytest.raises(FerlabError, match=r"FER2013Valid/label.csv:2: image 'fer9999999.png' not found"):
        FerPlus(label_root=str(root)).read()


def test_constructor_checks_sources_and_mode():
    with pytest.raises(FerlabError, match="exactly one vote source"):
        FerPlus("a.csv")
    with pytest.raises(FerlabError, match="data.source.label_mode: expected one of majority"):
        FerPlus("a.csv", ferplus_path="b.csv", label_mode="soft")


def test_label_csv_rows_need_name_box_and_ten_votes(ferplus_files, tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(ferplus_files["folders"], root)
    _rewrite(root / "FER2013Test" / "label.csv", 1, lambda s: s.rsplit(",", 1)[0])
    with pytest.raises(FerlabError, match=r"FER2013Test/label.csv:1: expected 12 fields, found 11"):
        FerPlus(label_root=str(root)).read()
