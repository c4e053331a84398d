"""Untrusted model files: checkpoints are checked against the SHA-256 recorded when they were
saved, and read with ``torch.load(weights_only=True)``, so a tampered file or a pickle with
code in it is refused with one line (exit 65) and never runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_qnet.cli.run import main
from bids_qnet.errors import EXIT_DATA, EXIT_SUCCESS, InputDataError
from bids_qnet.outputs.atomic import write_checkpoint
from bids_qnet.outputs.integrity import file_sha256
from bids_qnet.outputs.names import GroupFiles
from bids_qnet.outputs.provenance import software_versions
from bids_qnet.training.checkpoints import load_state

from .robustness import GROUP_QUICK, cli, group_cohort


class Bomb:
    """Unpickling this object calls ``os.mkdir(marker)``: code run by loading a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _bomb(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "hook": Bomb(marker)}, path)
    return path


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bids_qnet: error")]


def test_state_round_trip_and_checksum(tmp_path):
    path = tmp_path / "QNet.pt"
    digest = write_checkpoint(path, {"w": torch.arange(4.0)})
    assert digest == file_sha256(path)
    assert torch.equal(load_state(path, digest)["w"], torch.arange(4.0))
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(InputDataError, match="modified after it was saved"):
        load_state(path, digest)


def test_pickle_bomb_is_refused_without_running(tmp_path):
    bomb = _bomb(tmp_path / "bomb.pt", tmp_path / "control")
    torch.load(bomb, weights_only=False)  # control: an unsafe load runs the payload
    assert (tmp_path / "control").is_dir()
    _bomb(bomb, tmp_path / "marker")
    with pytest.raises(InputDataError, match="cannot be read as a state dict"):
        load_state(bomb)
    with pytest.raises(InputDataError, match="modified after it was saved"):
        load_state(bomb, "0" * 64)
    assert not (tmp_path / "marker").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A final model from a quick group run (stage 1 frozen: Q-Net only), and a participant."""
    bids, out = group_cohort(tmp_path_factory.mktemp("untrusted_model"))
    result = cli([str(bids), str(out), "group", *GROUP_QUICK, "--stage1", "frozen"])
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    for suffix in ("Chimap", "R2starmap", "T1w"):  # a participant for --model to classify
        path = bids / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, path)
    return {"bids": bids, "out": out, "final": GroupFiles(out).final.folder}


def test_checksums_seed_and_versions_recorded(trained):
    card = json.loads((trained["final"] / "model_card.json").read_text())
    assert card["Models"] == ["ROI", "QNet"]
    for name in card["Models"]:
        assert card["SHA256"][f"{name}.pt"] == file_sha256(trained["final"] / f"{name}.pt")
    assert card["TrainingSettings"]["random_seed"] == 3
    assert card["Software"] == software_versions()
    folds = [GroupFiles(trained["out"]).fold(0, k) for k in (0, 1)]
    assert sorted(GroupFiles(trained["out"]).models.glob("repeat-*_fold-*")) == [
        f.folder for f in folds
    ]
    for fold in folds:
        done = json.loads(fold.done.read_text())
        names = {"ROI.pt", "QNet.pt", "predictions.tsv"}
        assert set(done["SHA256"]) == names
        for name in names:
            assert done["SHA256"][name] == file_sha256(fold.folder / name), (fold.folder, name)
        assert done["config"]["random_seed"] == 3 and done["Software"] == software_versions()
    settings = json.loads(GroupFiles(trained["out"]).saved_settings()[0].read_text())
    assert settings["random_seed"] == 3 and settings["software"] == software_versions()


def _predict(trained, model: Path, tmp_path: Path) -> int:
    """Classify with ``--model``: the model is checked in the preflight, before any input."""
    return main(
        [
            str(trained["bids"]),
            str(tmp_path / "predictions"),
            "participant",
            "--model",
            str(model),
            "--skip-bids-validation",
            "--embedding-weights",
            "random",
        ]
    )


def _copy_model(trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained["final"], tmp_path / "final"))


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "swapped"])
def test_tampered_checkpoint_is_refused(trained, tmp_path, capsys, damage):
    model = _copy_model(trained, tmp_path)
    target = model / "QNet.pt"
    data = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "one byte changed":
        middle = len(data) // 2
        target.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    else:  # a checkpoint of the same architecture from another training (the fold's)
        shutil.copy(GroupFiles(trained["out"]).fold(0, 0).checkpoint("QNet"), target)
    assert _predict(trained, model, tmp_path) == EXIT_DATA
    lines = _errors(capsys)
    assert len(lines) == 1
    assert f"{target} was modified after it was saved" in lines[0]
    assert "refusing to load it" in lines[0]


def test_pickle_bomb_checkpoint_with_a_forged_checksum(trained, tmp_path, capsys):
    """Even when the card's checksum is forged to match, ``weights_only`` refuses the code."""
    model = _copy_model(trained, tmp_path)
    marker = tmp_path / "pwned"
    _bomb(model / "QNet.pt", marker)
    card = json.loads((model / "model_card.json").read_text())
    card["SHA256"]["QNet.pt"] = file_sha256(model / "QNet.pt")
    (model / "model_card.json").write_text(json.dumps(card))
    assert _predict(trained, model, tmp_path) == EXIT_DATA
    lines = _errors(capsys)
    assert len(lines) == 1 and "QNet.pt cannot be read as a state dict" in lines[0]
    assert "unsupported GLOBAL posix.mkdir" in lines[0] and "weights_only" not in lines[0]
    assert not marker.exists()


def test_model_card_without_checksums_is_refused(trained, tmp_path, capsys):
    model = _copy_model(trained, tmp_path)
    card = json.loads((model / "model_card.json").read_text())
    del card["SHA256"]
    (model / "model_card.json").write_text(json.dumps(card))
    assert _predict(trained, model, tmp_path) == EXIT_DATA
    lines = _errors(capsys)
    assert len(lines) == 1 and "without a recorded SHA-256" in lines[0]


def test_model_card_naming_other_files_is_refused(trained, tmp_path, capsys):
    model = _copy_model(trained, tmp_path)
    card = json.loads((model / "model_card.json").read_text())
    card["Models"].append("../../etc/passwd")
    (model / "model_card.json").write_text(json.dumps(card))
    assert _predict(trained, model, tmp_path) == EXIT_DATA
    lines = _errors(capsys)
    assert len(lines) == 1 and "unknown models ['../../etc/passwd']" in lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda card: [card], "is not a bids_qnet model card"),
        (lambda card: card["TrainingSettings"].pop("random_seed") and card, "random_seed"),
        (lambda card: card | {"Channels": "Chimap"}, "Channels is not a list"),
    ],
)
def test_model_card_of_the_wrong_shape_is_refused(trained, tmp_path, capsys, change, message):
    model = _copy_model(trained, tmp_path)
    card = json.loads((model / "model_card.json").read_text())
    (model / "model_card.json").write_text(json.dumps(change(card)))
    assert _predict(trained, model, tmp_path) == EXIT_DATA
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bids_qnet: error")]
    assert "Traceback" not in err
    assert len(lines) == 1 and message in lines[0], lines


def test_model_with_every_participant_failing_reports_their_errors(trained, tmp_path, capsys):
    """The participants' own lines, not a line about empty slice stacks."""
    bids = Path(shutil.copytree(trained["bids"], tmp_path / "bids"))
    (bids / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").write_bytes(b"")
    code = main(
        [
            str(bids),
            str(tmp_path / "predictions"),
            "participant",
            "--model",
            str(trained["final"]),
            "--skip-bids-validation",
            "--embedding-weights",
            "random",
        ]
    )
    assert code == EXIT_DATA
    lines = _errors(capsys)
    assert len(lines) == 1, lines
    assert "sub-01: " in lines[0] and "is an empty (0-byte) file" in lines[0]
