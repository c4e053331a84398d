"""Property-based tests (hypothesis): whatever the input, the contract holds.

For every generated NIfTI header, label file, filter file and ``participants.tsv``:

- the exit code is one of BEP027's;
- each problem is one ``bids_qnet: error:`` line, at most one per participant, and there is no
  traceback;
- the other participants go on (here: they reach the workflow; the workflow itself is replaced
  by a recorder, the registration being what the slow tests check);
- the input dataset is unchanged;
- nothing is marked complete that a clean run would not write.

An image the preflight accepts must also reach ANTs where nibabel puts it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bids_qnet.cli.run import main
from bids_qnet.errors import QNetError
from bids_qnet.inputs import bids_dataset as bids_io
from bids_qnet.inputs.labels import load_labels
from bids_qnet.workflows import run_participant

from .robustness import complete_files, participant_args, tiny_bids, tiny_profile

BEP027 = {0, 1, 16, 17, 18, 64, 65, 66, 73, 74}
FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def tree_hash(folder: Path) -> str:
    """Return one hash of every path and file content under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def check_contract(code: int, err: str, labels: list[str]) -> list[str]:
    """Assert the contract on an exit code and stderr; return the error lines."""
    assert code in BEP027, code
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("bids_qnet: error")]
    for label in labels:
        assert sum(f"sub-{label}:" in ln for ln in lines) <= 1, lines
    assert (code == 0) == (not lines), (code, lines)
    return lines


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two demo participants (2 mm) and the quick profile."""
    root = tmp_path_factory.mktemp("properties")
    bids = tiny_bids(root / "bids", n_participants=2)
    return {"bids": bids, "profile": tiny_profile(root), "root": root}


@pytest.fixture
def recorder(monkeypatch):
    """Replace the workflow by a recorder of the participants that reach it."""
    reached: list[str] = []

    def workflow(settings, run, profile, plan):
        reached.extend(i.name for i in plan.todo)

    monkeypatch.setattr(run_participant, "_run_workflow", workflow)
    monkeypatch.setattr(run_participant, "_collect_failures", lambda *args: [])
    return reached


def run_cli(base, bids: Path, out: Path, *extra: str) -> int:
    """Run the participant level; the work folder (the template on the grid) is shared."""
    args = participant_args(bids, out, base["root"] / "work", base["profile"])
    return main([*args, "--skip-bids-validation", *extra])


# --- NIfTI headers ------------------------------------------------------------------------

DTYPES = {
    2: "u1",
    4: "<i2",
    8: "<i4",
    16: "<f4",
    64: "<f8",
    256: "i1",
    512: "<u2",
    32: "<c8",
    128: None,
}


@st.composite
def headers(draw):
    """A small image, then any of its header fields bent (on disk, exactly as drawn)."""
    shape = draw(st.lists(st.integers(1, 12), min_size=3, max_size=3))
    code = draw(st.sampled_from(sorted(DTYPES)))
    changes = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "dim",
                    "pixdim",
                    "qform_code",
                    "sform_code",
                    "srow",
                    "scl",
                    "vox_offset",
                    "truncate",
                    "quatern",
                ]
            ),
            st.just(True),
        )
    )
    values = st.sampled_from([0.0, -1.0, 1.0, 2.5, np.nan, np.inf, 1e30])
    spec = {"shape": shape, "datatype": code, "gzip": draw(st.booleans())}
    if "dim" in changes:
        spec["dim"] = draw(
            st.lists(st.sampled_from([0, 1, 3, 12, 1200, 32767, -1]), min_size=1, max_size=7)
        )
    if "pixdim" in changes:
        spec["pixdim"] = draw(st.lists(values, min_size=3, max_size=3))
    for key in ("qform_code", "sform_code"):
        if key in changes:
            spec[key] = draw(st.integers(0, 5))
    if "srow" in changes:
        spec["srow"] = (draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(values))
    if "scl" in changes:
        spec["scl"] = (draw(values), draw(values))
    if "vox_offset" in changes:
        spec["vox_offset"] = draw(st.sampled_from([0.0, 100.0, 352.0, 353.0, 1e9]))
    if "truncate" in changes:
        spec["truncate"] = draw(st.floats(0.0, 0.99))
    if "quatern" in changes:
        spec["quatern"] = draw(st.lists(values, min_size=3, max_size=3))
    return spec


def write_header_case(path: Path, spec: dict) -> None:
    """Write the image ``spec`` describes, header fields set byte for byte."""
    kind = DTYPES[spec["datatype"]]
    shape = tuple(spec["shape"])
    if kind is None:  # RGB24
        data = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        data["R"] = 7
    else:
        data = (np.arange(np.prod(shape)).reshape(shape) % 50 + 1).astype(kind)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(shape) + 1.0
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    header = np.ndarray((), dtype=nib.Nifti1Header.template_dtype, buffer=bytearray(348))
    header[...] = np.frombuffer(image.header.binaryblock, dtype=nib.Nifti1Header.template_dtype)
    header["vox_offset"] = 352.0
    if "dim" in spec:
        dims = spec["dim"]
        header["dim"][0] = len(dims)
        header["dim"][1 : 1 + len(dims)] = dims
    if "pixdim" in spec:
        header["pixdim"][1:4] = spec["pixdim"]
    for key in ("qform_code", "sform_code"):
        if key in spec:
            header[key] = spec[key]
    if "srow" in spec:
        row, column, value = spec["srow"]
        header[f"srow_{'xyz'[row]}"][column] = value
    if "scl" in spec:
        header["scl_slope"], header["scl_inter"] = spec["scl"]
    if "quatern" in spec:
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = spec["quatern"]
    if "vox_offset" in spec:
        header["vox_offset"] = spec["vox_offset"]
    payload = data.tobytes(order="F")
    if "truncate" in spec:
        payload = payload[: int(len(payload) * spec["truncate"])]
    blob = header.tobytes() + b"\0" * 4 + payload
    path.unlink(missing_ok=True)
    if spec["gzip"]:
        path.write_bytes(gzip.compress(blob, mtime=0))
    else:
        path.with_name(path.name.removesuffix(".gz")).write_bytes(blob)


@FAST
@given(spec=headers())
def test_any_header_gives_one_line_or_a_faithful_image(base, recorder, tmp_path, capsys, spec):
    work = Path(tempfile_dir(tmp_path))
    bids = Path(shutil.copytree(base["bids"], work / "bids"))
    chimap = bids / "sub-02" / "anat" / "sub-02_Chimap.nii.gz"
    write_header_case(chimap, spec)
    before = tree_hash(bids)
    recorder.clear()
    capsys.readouterr()
    code = run_cli(base, bids, work / "out")
    lines = check_contract(code, capsys.readouterr().err, ["01", "02"])
    assert "sub-01" in recorder, (recorder, lines)  # the other participant goes on
    assert ("sub-02" in recorder) != any(ln.startswith("bids_qnet: error: sub-02:") for ln in lines)
    assert tree_hash(bids) == before
    if (work / "out").exists():
        assert not complete_files(work / "out")  # nothing ran: nothing may look complete
    if "sub-02" in recorder:  # accepted: it must reach ANTs where nibabel puts it
        assert_prepared_faithfully(next(chimap.parent.glob("sub-02_Chimap.nii*")), work)


def tempfile_dir(tmp_path: Path) -> Path:
    """Return a fresh folder under ``tmp_path`` for one hypothesis example."""
    index = len(list(tmp_path.iterdir()))
    folder = tmp_path / f"example{index}"
    folder.mkdir()
    return folder


def assert_prepared_faithfully(path: Path, work: Path) -> None:
    """The prepared copy of ``path`` has nibabel's geometry for ITK and finite voxels."""
    import ants

    from bids_qnet.workflows.steps import prepare

    image = nib.load(path)
    cwd = Path.cwd()
    folder = work / "prepare"
    folder.mkdir()
    try:
        os.chdir(folder)
        prepared, _ = prepare({"Chimap": str(path)}, 1)
    finally:
        os.chdir(cwd)
    itk = ants.image_read(prepared["Chimap"])
    lps = np.diag([-1.0, -1.0, 1.0])
    geometry = lps @ np.asarray(itk.direction) @ np.diag(itk.spacing)
    assert np.allclose(geometry, image.affine[:3, :3], atol=1e-3), (geometry, image.affine)
    assert np.allclose(lps @ np.asarray(itk.origin), image.affine[:3, 3], atol=1e-3)
    assert np.isfinite(itk.numpy()).all()


# --- label files ---------------------------------------------------------------------------

LABEL_TEXT = st.one_of(
    st.binary(max_size=64),
    st.lists(
        st.sampled_from(["01", "sub-02", "02", "03", "x y", "../01", "\ufeff01", "", "#c", "a,b"]),
        max_size=5,
    ).map(lambda items: "\n".join(items).encode()),
)


@FAST
@given(content=LABEL_TEXT, form=st.sampled_from(["@", "./", ".txt"]))
def test_any_label_file(base, recorder, tmp_path, capsys, content, form):
    work = tempfile_dir(tmp_path)
    name = "labels.txt" if form == ".txt" else "labels"
    (work / name).write_bytes(content)
    item = {"@": f"@{work / name}", "./": str(work / name), ".txt": str(work / name)}[form]
    before = tree_hash(base["bids"])
    recorder.clear()
    capsys.readouterr()
    code = run_cli(base, base["bids"], work / "out", "--participant-label", item)
    lines = check_contract(code, capsys.readouterr().err, ["01", "02", "03"])
    assert tree_hash(base["bids"]) == before
    if code == 0:
        assert recorder and not lines
    if code == 64:
        assert not recorder and not (work / "out").exists()


# --- filter files --------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
QUERIES = st.dictionaries(
    st.sampled_from(["Chimap", "T1w", "R2starmap", "all", "x"]),
    st.dictionaries(
        st.sampled_from(["run", "acq", "datatype", "return_type", "subject", "colour", "part"]),
        JSON,
        max_size=2,
    ),
    max_size=3,
)


@FAST
@given(
    content=st.one_of(
        QUERIES.map(lambda q: json.dumps(q).encode()),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40),
    )
)
def test_any_filter_file(base, recorder, tmp_path, capsys, content):
    work = tempfile_dir(tmp_path)
    (work / "filters.json").write_bytes(content)
    before = tree_hash(base["bids"])
    recorder.clear()
    capsys.readouterr()
    code = run_cli(
        base, base["bids"], work / "out", "--bids-filter-file", str(work / "filters.json")
    )
    check_contract(code, capsys.readouterr().err, ["01", "02"])
    assert tree_hash(base["bids"]) == before


# --- participants.tsv ------------------------------------------------------------------------

CELLS = st.sampled_from(["sub-01", "01", "sub-02", "HC", "HH", "", "n/a", "3.5", "\ufeff", "a b"])
TABLES = st.one_of(
    st.binary(max_size=80),
    st.lists(st.lists(CELLS, min_size=1, max_size=3), min_size=0, max_size=5).map(
        lambda rows: (
            "\n".join(
                "\t".join(r) for r in [["participant_id", "group", "age"][: len(rows[0])], *rows]
            ).encode()
            if rows
            else b""
        )
    ),
)


@settings(max_examples=60, deadline=None)
@given(content=TABLES, column=st.sampled_from(["group", "age", "participant_id"]))
def test_any_participants_tsv(tmp_path_factory, content, column):
    path = tmp_path_factory.mktemp("tsv") / "participants.tsv"
    path.write_bytes(content)
    try:
        labels, spec, notes = load_labels(path, column)
    except QNetError as exc:  # the command line prints it as one line with its code
        assert exc.exit_code in BEP027
        return
    assert len(spec.classes) >= 2
    assert all(pid.startswith("sub-") for pid in labels)
    assert set(labels.values()) <= set(range(len(spec.classes)))


def test_preflight_accepts_only_readable_3d_images(tmp_path):
    """A smoke example of the header property, kept as a plain test."""
    path = tmp_path / "sub-01_Chimap.nii.gz"
    write_header_case(path, {"shape": [4, 5, 6], "datatype": 16, "gzip": True, "pixdim": [0, 0, 0]})
    info = bids_io.check_image(path)
    assert info["zooms"] == [2.0, 2.0, 2.0]
