"""Inputs nobody had tried (issue 14): nothing lost, nothing silently wrong, one line each.

Every case ends with one ``bids_qnet: error:`` line (per participant concerned), a BEP027 exit
code and no traceback; nothing is written where bids_qnet has no business writing. The cases
run in the preflight (seconds); the registrations they would lead to are in
``test_hostile_registration.py`` (slow).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qnet.cli.parser import build_parser
from bids_qnet.cli.run import main
from bids_qnet.config import Settings
from bids_qnet.errors import (
    EXIT_DATA,
    EXIT_FAILURE,
    EXIT_NO_INPUT,
    EXIT_USAGE,
    InputDataError,
    QNetError,
    UsageError,
    describe,
)
from bids_qnet.inputs import bids_dataset as bids_io
from bids_qnet.inputs.scans import find_scans
from bids_qnet.inputs.selection import clean_labels, load_filters
from bids_qnet.outputs.derivatives import check_output_folder, init_derivatives

from .robustness import GROUP_QUICK, group_cohort, participant_args, tiny_bids, tiny_profile

CHANNELS = ("Chimap", "R2starmap", "T1w")


def error_lines(capsys) -> list[str]:
    """Return the ``bids_qnet: error`` lines on stderr; fail on a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return [ln for ln in err.splitlines() if ln.startswith("bids_qnet: error")]


def tree_hash(folder: Path) -> dict[str, str]:
    """Return ``relative path -> SHA-256`` (links as their target) of everything in ``folder``."""
    hashes = {}
    for path in sorted(Path(folder).rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            hashes[key] = "-> " + os.readlink(path)
        elif path.is_file():
            hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            hashes[key] = "dir"
    return hashes


def copy_participant(bids: Path, source: str, target: str) -> Path:
    """Copy sub-<source> to sub-<target>, renaming the files; return the new anat folder."""
    anat = bids / f"sub-{target}" / "anat"
    anat.mkdir(parents=True)
    for path in (bids / f"sub-{source}" / "anat").iterdir():
        shutil.copy(path, anat / path.name.replace(f"sub-{source}", f"sub-{target}"))
    return anat


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A one-participant demo dataset (2 mm) and the quick test profile."""
    root = tmp_path_factory.mktemp("hostile")
    return {"bids": tiny_bids(root / "bids"), "profile": tiny_profile(root), "root": root}


@pytest.fixture
def bids(dataset, tmp_path):
    """A writable copy of the dataset for one test."""
    return Path(shutil.copytree(dataset["bids"], tmp_path / "bids"))


def participant(bids: Path, out: Path, profile: Path, *extra: str) -> int:
    """Run the participant level in this process (validation skipped: the cases are broken)."""
    args = participant_args(bids, out, out.parent / "work", profile)
    return main([*args, "--skip-bids-validation", *extra])


# --- data loss: output folders that hold someone else's files ------------------------------


def _foreign_folders(root: Path, bids: Path) -> dict[str, Path]:
    parent = root / "parent"
    parent.mkdir()
    (parent / "README.md").write_text("my notes\n")
    (parent / "dataset_description.json").write_text('{"Name": "my project"}')
    (parent / "CITATION.md").write_text("cite me\n")
    raw = Path(shutil.copytree(bids, root / "other_raw"))
    qsmxt = root / "qsmxt"
    qsmxt.mkdir()
    (qsmxt / "dataset_description.json").write_text(
        json.dumps({"Name": "q", "DatasetType": "derivative", "GeneratedBy": [{"Name": "QSMxT"}]})
    )
    (qsmxt / "README").write_text("QSMxT output\n")
    odd = root / "odd_description"
    odd.mkdir()
    (odd / "dataset_description.json").write_bytes(b'["bids_qnet"]')
    return {"parent": parent, "raw": raw, "qsmxt": qsmxt, "odd": odd}


@pytest.mark.parametrize("kind", ["parent", "raw", "qsmxt", "odd"])
def test_foreign_output_dir_is_refused_and_untouched(dataset, tmp_path, capsys, kind):
    bids = Path(shutil.copytree(dataset["bids"], tmp_path / "data" / "bids"))
    folders = _foreign_folders(tmp_path / "data", bids)
    out = bids.parent if kind == "parent" else folders[kind]
    before, before_bids = tree_hash(out), tree_hash(bids)
    assert participant(bids, out, dataset["profile"]) == EXIT_USAGE
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert f"output_dir {out} is not empty" in lines[0] and "would overwrite" in lines[0]
    assert tree_hash(out) == before and tree_hash(bids) == before_bids
    assert not (out.parent / "work").exists()


def test_group_level_refuses_a_foreign_output_dir(tmp_path, capsys):
    bids, out = group_cohort(tmp_path, n_participants=2)
    (out / "dataset_description.json").write_text('{"Name": "someone else\'s"}')
    before = tree_hash(out)
    assert main([str(bids), str(out), "group", *GROUP_QUICK]) == EXIT_USAGE
    assert "is not a bids_qnet derivative dataset" in error_lines(capsys)[0]
    assert tree_hash(out) == before


@pytest.mark.parametrize("where", ["output", "work", "same"])
def test_derivative_inputs_are_protected_like_bids_dir(dataset, tmp_path, capsys, where):
    bids = Path(shutil.copytree(dataset["bids"], tmp_path / "bids"))
    qsmxt = tmp_path / "qsmxt"
    anat = qsmxt / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.move(bids / "sub-01" / "anat" / "sub-01_Chimap.nii.gz", anat / "sub-01_Chimap.nii.gz")
    description = {"Name": "q", "DatasetType": "derivative", "GeneratedBy": [{"Name": "QSMxT"}]}
    (qsmxt / "dataset_description.json").write_text(json.dumps(description))
    before = tree_hash(qsmxt)
    out = {"output": qsmxt / "bids_qnet", "work": tmp_path / "out", "same": qsmxt}[where]
    args = participant_args(bids, out, tmp_path / "work", dataset["profile"])
    if where == "work":
        args[args.index("-w") + 1] = str(qsmxt / "work")
    code = main([*args, "--skip-bids-validation", "-d", f"qsmxt={qsmxt}"])
    assert code == EXIT_USAGE
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"is inside -d qsmxt {qsmxt}" in lines[0], lines
    assert "never writes into an input dataset" in lines[0]
    assert tree_hash(qsmxt) == before


def test_output_folders_bids_qnet_may_use(tmp_path):
    check_output_folder(tmp_path / "new")  # does not exist yet
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    ours = tmp_path / "ours"
    init_derivatives(ours, tmp_path)
    (ours / "sub-01").mkdir()
    check_output_folder(ours)  # a rerun, a resumed run, the group level
    starting = tmp_path / "starting"
    starting.mkdir()  # another job is writing its description under a temporary name
    (starting / ".tmp-123-abcdef01-dataset_description.json").write_text("{")
    check_output_folder(starting)
    (starting / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        check_output_folder(starting)


def _start_job(args) -> str:
    """One participant job's first steps on a shared output folder, started with the others."""
    out, bids, barrier = args
    barrier.wait()
    try:
        for _ in range(20):  # the check of one job may fall between any two writes of another
            check_output_folder(Path(out))
            init_derivatives(Path(out), Path(bids))
    except QNetError as exc:
        return str(exc)
    return "ok"


def test_parallel_jobs_accept_the_folder_they_create_together(tmp_path):
    """Jobs racing to create one output folder each see it new, half-made or bids_qnet's."""
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        out = tmp_path / f"out{attempt}"
        with context.Manager() as manager:
            barrier = manager.Barrier(6)
            with context.Pool(6) as pool:
                results = pool.map(_start_job, [(str(out), str(tmp_path), barrier)] * 6)
        assert results == ["ok"] * 6, results
        assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"]
        assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


# --- label files and repeated options --------------------------------------------------------


def test_a_bare_label_never_reads_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("01").write_text("02\n03\n")
    assert clean_labels(["01"], "sub") == ["01"]
    assert clean_labels(["@01"], "sub") == ["02", "03"]
    assert clean_labels(["./01"], "sub") == ["02", "03"]
    Path("labels.txt").write_text("\ufeffsub-04\r\n# a comment\n05, 06\n")  # BOM, CRLF
    assert clean_labels(["labels.txt"], "sub") == ["04", "05", "06"]
    Path("participants.tsv").write_text("participant_id\tage\nsub-07\t30\nsub-08\t40\n")
    assert clean_labels(["participants.tsv"], "sub") == ["07", "08"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe0\x001\x00", "is not UTF-8 text"),
        (b"", "lists no label"),
        (b"01\n../02\n", "is not a BIDS label"),
    ],
)
def test_bad_label_files(tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        clean_labels([f"@{path}"], "sub")
    with pytest.raises(UsageError, match="does not exist"):
        clean_labels([f"@{tmp_path / 'missing'}"], "sub")
    with pytest.raises(UsageError, match="is not a file"):
        clean_labels([f"@{tmp_path}"], "sub")


def test_repeated_options_add_up(tmp_path):
    args = [str(tmp_path), str(tmp_path / "o"), "participant"]
    parsed = build_parser().parse_args(
        [*args, "--participant-label", "01", "--participant_label", "02", "03"]
    )
    assert parsed.participant_label == ["01", "02", "03"]
    parsed = build_parser().parse_args([*args, "-d", f"a={tmp_path}", "-d", f"b={tmp_path}/x"])
    settings = Settings.from_arguments(parsed)
    assert settings.inputs.derivatives == {"a": tmp_path, "b": tmp_path / "x"}


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["a=X", "a=X"], {"a": "X"}),  # a harmless duplicate
        (["a=X", "b=X"], {"a": "X"}),  # one dataset under two names counts once
        (["a=X", "a=Y"], "names two datasets a"),
        (["=X"], "give NAME=PATH"),
        (["a="], "give NAME=PATH"),
    ],
)
def test_derivative_duplicates(tmp_path, capsys, pairs, expected):
    argv = [str(tmp_path), str(tmp_path / "o"), "participant"]
    pairs = [p.replace("X", str(tmp_path / "x")).replace("Y", str(tmp_path / "y")) for p in pairs]
    if isinstance(expected, dict):
        settings = Settings.from_arguments(build_parser().parse_args([*argv, "-d", *pairs]))
        assert settings.inputs.derivatives == {"a": tmp_path / "x"}
        return
    try:
        code = main([*argv, "-d", *pairs])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == EXIT_USAGE
    assert expected in capsys.readouterr().err


# --- filter files, numbers, descriptions: one line, exit 64 or 65 ----------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text"),
        (b'{"Chimap": {"run": {"a": 1}}}', "Chimap.run must be a string, number"),
        (b'{"Chimap": {"return_type": "id"}}', "Chimap.return_type is not a BIDS entity"),
        (b'{"all": {"subject": "02"}}', "all.subject is set by bids_qnet"),
        (b'{"T1w": [1]}', "must map channel suffixes to query objects"),
        (b"\xef\xbb\xbf" + b'{"T1w": {"run": 1}}', None),  # a BOM is fine
    ],
)
def test_filter_files(tmp_path, content, message):
    path = tmp_path / "filters.json"
    path.write_bytes(content)
    if message is None:
        assert load_filters(path) == {"T1w": {"run": 1}}
        return
    with pytest.raises(UsageError, match=message):
        load_filters(path)


def test_filter_file_that_is_a_folder_exits_64(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = participant(
        dataset["bids"], out, dataset["profile"], "--bids-filter-file", str(tmp_path)
    )
    assert code == EXIT_USAGE
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"--bids-filter-file {tmp_path} is not a file" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--template-resolution", "nan", "--template-resolution must be"),
        ("--template-resolution", "inf", "--template-resolution must be a finite number"),
        ("--crop-margin", "nan", "--crop-margin must be a finite number"),
        ("--random-seed", "-1", "--random-seed must not be negative"),
        ("--mem", "-5", "--mem '-5': a positive size is expected"),
        ("--mem", "nanG", "--mem 'nanG': a positive size is expected"),
    ],
)
def test_numbers_out_of_range_exit_64(tmp_path, capsys, option, value, message):
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", option, value]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'["Name", "BIDSVersion"]', "holds a JSON list, not an object"),
        ('{"Name": "Caf\u00e9", "BIDSVersion": "1.10.0"}'.encode("latin-1"), "is not UTF-8"),
    ],
)
def test_bad_dataset_description_exits_65(dataset, tmp_path, capsys, content, message):
    bids = Path(shutil.copytree(dataset["bids"], tmp_path / "bids"))
    (bids / "dataset_description.json").write_bytes(content)
    assert participant(bids, tmp_path / "out", dataset["profile"]) == EXIT_DATA
    lines = error_lines(capsys)
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_derivative_description_exits_65(dataset, tmp_path, capsys):
    qsmxt = tmp_path / "qsmxt"
    qsmxt.mkdir()
    (qsmxt / "dataset_description.json").write_text("[]")
    code = participant(dataset["bids"], tmp_path / "out", dataset["profile"], "-d", str(qsmxt))
    assert code == EXIT_DATA
    assert "holds a JSON list" in error_lines(capsys)[0]


# --- one bad participant never stops the others ----------------------------------------------


def _huge_header(path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((1200, 1200, 1200))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    with gzip.open(path, "wb") as handle:  # about 125 bytes on disk
        handle.write(header.binaryblock + b"\0" * 4 + b"\0" * 64)


def _rgb(path: Path) -> None:
    data = np.zeros((20, 20, 20), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(data, np.eye(4) * [2, 2, 2, 1]), path)


def _complex(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.complex64), np.eye(4)), path)


def _short_nii(path: Path) -> None:
    image = nib.load(path)
    target = path.with_name(path.name.replace(".nii.gz", ".nii"))
    nib.save(image, target)
    target.write_bytes(target.read_bytes()[:-1000])  # an uncompressed file cut short
    path.unlink()


def _sheared(path: Path) -> None:
    image = nib.load(path)
    affine = image.affine.copy()
    affine[0, 1] += 0.5  # the y voxel axis leans into x
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), path)


def _broken_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("../../.git/annex/objects/XX/missing.nii.gz")


BREAKAGES = {
    "11": (_huge_header, EXIT_DATA, "its header claims a 1200 x 1200 x 1200 float32 image"),
    "12": (_rgb, EXIT_DATA, "holds RGB voxels; a real-valued scalar map is expected"),
    "13": (_complex, EXIT_DATA, "holds complex64 voxels"),
    "14": (_short_nii, EXIT_DATA, "is truncated: its header describes"),
    "15": (_sheared, EXIT_DATA, "has a sheared affine"),
    "16": (_broken_link, EXIT_NO_INPUT, "is a broken symbolic link"),
}


def test_each_broken_participant_gets_its_line_and_the_others_go_on(
    dataset, bids, tmp_path, capsys
):
    for label, (damage, _, _) in BREAKAGES.items():
        anat = copy_participant(bids, "01", label)
        damage(anat / f"sub-{label}_Chimap.nii.gz")
    before = tree_hash(bids)
    labels = list(BREAKAGES)
    out = tmp_path / "out"
    code = participant(bids, out, dataset["profile"], "--participant-label", *labels)
    lines = error_lines(capsys)
    assert len(lines) == len(BREAKAGES), lines
    for line, (label, (_, _, words)) in zip(lines, BREAKAGES.items(), strict=True):
        assert line.startswith(f"bids_qnet: error: sub-{label}: "), line
        assert words in line, (words, line)
    assert code == BREAKAGES[labels[0]][1]  # the first failing participant's code
    assert tree_hash(bids) == before
    assert not out.exists()  # nothing to process: nothing written


def test_huge_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.nii.gz"
    _huge_header(path)
    assert path.stat().st_size < 200
    with pytest.raises(InputDataError, match="6.4 GiB of voxel data"):
        bids_io.check_image(path)


def test_pixdim_that_disagrees_with_the_affine_is_noted(tmp_path):
    path = tmp_path / "t1w.nii.gz"
    image = nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_qform(None, code=0)
    image.header["pixdim"][1:4] = 0.0
    nib.save(image, path)
    info = bids_io.check_image(path)
    assert info["zooms"] == [2.0, 2.0, 2.0]
    assert info["header_zooms"] == [1.0, 1.0, 1.0]  # nibabel reads a pixdim of 0 as 1
    assert len(info["sha256"]) == 64


# --- messages ------------------------------------------------------------------------------


def test_messages_are_one_line_with_their_meaning(tmp_path, capsys, monkeypatch):
    assert describe(MemoryError()) == "not enough memory"
    assert describe(ValueError("a\n  b")) == "ValueError: a b"
    problem = bids_io.Problem("01", None, InputDataError("first line\nsecond line"))
    assert problem.line() == "sub-01: first line second line"

    def boom(settings):
        raise MemoryError

    monkeypatch.setattr("bids_qnet.cli.run.settings_from_args", boom)
    assert main([str(tmp_path), str(tmp_path / "o"), "participant"]) == EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bids_qnet: error: not enough memory: give the job more memory or lower --nprocs"
    ]

    def bug(settings):
        raise KeyError("x")

    monkeypatch.setattr("bids_qnet.cli.run.settings_from_args", bug)
    assert main([str(tmp_path), str(tmp_path / "o"), "participant"]) == EXIT_FAILURE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unexpected KeyError: 'x'" in lines[0]


# --- the group level's inputs and --model -------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "object", "shape"])
def test_broken_participant_arrays_name_the_participant(tmp_path, capsys, damage):
    bids, out = group_cohort(tmp_path, n_participants=4)
    slices = next((out / "sub-03" / "anat").glob("*_slices.npy"))
    marker = tmp_path / "unpickled"
    if damage == "truncated":
        slices.write_bytes(slices.read_bytes()[:-100])
    elif damage == "object":
        np.save(slices, np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    else:
        np.save(slices, np.zeros((4, 8, 8), np.float32))
    code = main([str(bids), str(out), "group", *GROUP_QUICK, "--stage1", "frozen"])
    assert code == EXIT_DATA
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("bids_qnet: error: sub-03: "), lines
    assert "--overwrite" in lines[0]
    assert not marker.exists()  # never unpickled
    with pytest.raises(InputDataError, match="sub-03"):
        find_scans(out)


class _Marker:
    """Unpickling this object creates a folder: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_group_outputs_of_every_participant_checked_once(tmp_path):
    _, out = group_cohort(tmp_path, n_participants=3)
    assert [s.scan_id for s in find_scans(out)] == ["sub-01", "sub-02", "sub-03"]
    sidecar = next((out / "sub-02" / "anat").glob("*_embeddings.json"))
    sidecar.write_text("[1, 2]")  # not an object: not complete, left out with a warning
    assert [s.scan_id for s in find_scans(out)] == ["sub-01", "sub-03"]


def test_inputs_fingerprint_follows_the_selected_files(tmp_path):
    """A ``-d`` dataset or a filter that selects another file, or a replaced file, is new input."""
    from bids_qnet.workflows.sink import inputs_fingerprint

    bids, deriv = tmp_path / "bids", tmp_path / "qsmxt"
    raw = {"Chimap": bids / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"}
    other = {"Chimap": deriv / "sub-01" / "anat" / "sub-01_Chimap.nii.gz"}
    info = {"Chimap": {"sha256": "a" * 64}}
    base = inputs_fingerprint(bids, raw, info)
    assert inputs_fingerprint(bids, dict(raw), {"Chimap": {"sha256": "a" * 64}}) == base
    assert inputs_fingerprint(bids, other, info) != base  # -d selects the derivative's map
    assert inputs_fingerprint(bids, raw, {"Chimap": {"sha256": "b" * 64}}) != base  # replaced
    run2 = {"Chimap": raw["Chimap"].with_name("sub-01_run-2_Chimap.nii.gz")}
    assert inputs_fingerprint(bids, run2, info) != base  # a filter selects another run
