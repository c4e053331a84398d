import os
import struct
from pathlib import Path

import numpy as np
import pytest

from bids_qnet import __version__
from bids_qnet.reports import participant as participant_module
from bids_qnet.reports.figures import registration_qc, robust_window, slice_montage
from bids_qnet.reports.participant import write_participant_report

SHAPE = (40, 48, 40)
BOX = ((12, 18, 14), (28, 32, 26))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def volumes():
    """An ellipsoid 'brain' with a darker core ('white matter') and two bright 'nuclei'."""
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2 for n in SHAPE), indexing="ij")
    radius = (x / 16) ** 2 + (y / 20) ** 2 + (z / 16) ** 2
    template = np.where(radius < 1, 60.0, 0.0) + np.where(radius < 0.4, 40.0, 0.0)
    nuclei = ((np.abs(x) - 5) / 3) ** 2 + (y / 4) ** 2 + (z / 3) ** 2 < 1
    chi = np.where(radius < 1, -0.02, 0.0) + np.where(nuclei, 0.15, 0.0)
    chi[0, 0, 0] = np.nan  # non-finite voxels must not break windowing
    return template.astype(np.float32), {"T1w": template * 1.1 + 5, "Chimap": chi}


def test_registration_qc_writes_png(volumes, tmp_path):
    template, registered = volumes
    out = registration_qc(template, registered, *BOX, tmp_path / "figs" / "qc.png", title="sub-01")
    assert out == tmp_path / "figs" / "qc.png"
    width, height = png_size(out)
    assert 1000 < width < 2500 and 500 < height < 1500  # 5 columns, 2 rows at 150 dpi
    assert width > height
    assert [p.name for p in out.parent.iterdir()] == ["qc.png"]  # no temporary file left


def test_registration_qc_rows_follow_channels_and_zooms(volumes, tmp_path):
    template, registered = volumes
    one = registration_qc(template, {"T1w": registered["T1w"]}, *BOX, tmp_path / "one.png")
    three = {**registered, "R2starmap": registered["T1w"] / 3}
    out = registration_qc(template, three, *BOX, tmp_path / "three.png", zooms=(1.0, 1.0, 2.5))
    assert png_size(out)[1] > png_size(one)[1] * 2


def test_registration_qc_rejects_bad_input(volumes, tmp_path):
    template, registered = volumes
    with pytest.raises(ValueError, match="shape"):
        registration_qc(template, {"T1w": template[:-1]}, *BOX, tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside"):
        registration_qc(template, registered, (0, 0, 0), (41, 10, 10), tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        registration_qc(template, {}, *BOX, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_robust_window_uses_mask_and_ignores_nan():
    image = np.arange(1000, dtype=float).reshape(10, 10, 10)
    image[0, 0, 0] = np.nan
    mask = image >= 500
    low, high = robust_window(image, mask)
    assert 500 < low < 510 and 985 < high < 999
    assert robust_window(np.zeros((3, 3, 3))) == (0.0, 1.0)
    assert robust_window(np.full((3, 3, 3), np.nan)) == (0.0, 1.0)


def test_slice_montage(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.random((30, 3, 20, 24)).astype(np.float32)
    out = slice_montage(stack, ["Chimap", "R2starmap", "T1w"], tmp_path / "m.png", title="x")
    width, height = png_size(out)
    assert 1500 < width < 2500 and 400 < height < 1200
    few = slice_montage(stack[:4, :2], ["Chimap", "T1w"], tmp_path / "few.png", max_slices=12)
    assert png_size(few)[0] < width / 2  # only 4 columns
    assert png_size(few)[1] < height  # 2 rows, no RGB row
    with pytest.raises(ValueError, match="channel names"):
        slice_montage(stack, ["Chimap"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        slice_montage(stack[0], ["a", "b", "c"], tmp_path / "bad.png")


@pytest.fixture
def report_inputs(volumes, tmp_path):
    template, registered = volumes
    figures = tmp_path / "sub-01" / "figures"
    qc = registration_qc(
        template, registered, *BOX, figures / "sub-01_ses-1_desc-registration_qc.png"
    )
    stack = np.random.default_rng(1).random((12, 2, 16, 16))
    montage = slice_montage(
        stack, ["Chimap", "T1w"], figures / "sub-01_ses-1_desc-bgcrop_slices.png"
    )
    summary = {
        "Inputs": {
            "Chimap": {"Shape": [64, 64, 40], "VoxelSize": [1.0, 1.0, 2.0], "Oblique": False},
            "T1w": {"Shape": [176, 256, 256], "VoxelSize": [1, 1, 1], "Oblique": True},
        },
        "Normalisation": {"Profile": "precise", "Transform": "SyN", "BrainCorrelation": 0.912345},
        "Crop": {"Regions": ["Left_Caudate", "Right_Caudate"], "Box": {"lower": [1, 2, 3]}},
        "IntensityWindows": {"Chimap": np.array([-0.15, 0.35])},
        "Non-finite voxels set to zero": np.int64(3),
        "Embedding": {"WeightsSHA256": "ab" * 32, "Device": "cpu"},
        "Step timings (s)": {"register": 12.3456, "embed": 1.5},
        "Note": "<script>alert('x')</script>",
        "Warnings": ["mask overlap 0.71 < 0.8 & low"],
        "CommandLine": ["bids_qnet", "/data", "/out", "participant", "--x", "<b>"],
        "SettingsPath": "sub-01/log/run1/bids_qnet_settings.json",
        "RunID": "20240101-run1",
    }
    return tmp_path, summary, [qc, montage]


def test_participant_report_content(report_inputs):
    out_dir, summary, figures = report_inputs
    out = write_participant_report(out_dir, "sub-01", "ses-1", summary, figures, out_dir / "r.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "sub-01, ses-1" in text and f"version {__version__}" in text
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "mask overlap 0.71 &lt; 0.8 &amp; low" in text and 'id="warnings"' in text
    assert "&lt;b&gt;" in text and "20240101-run1" in text
    for snippet in ("0.9123", "12.35", "-0.15, 0.35", "Left_Caudate, Right_Caudate", "ab" * 32):
        assert snippet in text
    assert "<th>VoxelSize</th>" in text  # dict of records -> one table
    for name in ("registration_qc", "bgcrop_slices"):
        relative = f"sub-01/figures/sub-01_ses-1_desc-{name}.png"
        assert f'src="{relative}"' in text
        assert (out.parent / relative).is_file()
    assert "Registration to the template" in text and "Slice stack" in text
    assert "http" not in text.replace("http-equiv", "")  # self-contained: nothing fetched


def test_participant_report_relative_figures_and_missing(report_inputs):
    out_dir, _, figures = report_inputs
    relative = [f.relative_to(out_dir) for f in figures] + [Path("sub-01/figures/gone.png")]
    out = write_participant_report(out_dir, "01", None, {}, relative, out_dir / "sub-01.html")
    text = out.read_text()
    assert "sub-01</h1>" in text and "ses-" not in text.split("<main>")[0]
    assert 'src="sub-01/figures/sub-01_ses-1_desc-registration_qc.png"' in text
    assert 'class="missing"' in text and "gone.png" in text
    assert 'src="sub-01/figures/gone.png"' not in text


def test_participant_report_atomic(report_inputs, monkeypatch):
    out_dir, summary, figures = report_inputs
    out = out_dir / "sub-01.html"
    write_participant_report(out_dir, "01", None, summary, figures, out)
    before = out.read_text()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(participant_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_participant_report(out_dir, "01", None, {"x": "changed"}, figures, out)
    assert out.read_text() == before
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_registration_qc_on_the_real_template(tmp_path):
    pytest.importorskip("ants")
    from bids_qnet.reference import atlas_on_grid, load_reference, template_on_grid

    reference = load_reference()
    template_image = template_on_grid(reference, 2.0)
    template = template_image.numpy()
    atlas = atlas_on_grid(reference, template_image).numpy()
    names = [
        f"{side}_{r}" for side in ("Left", "Right") for r in ("Caudate", "Putamen", "Pallidum")
    ]
    found = np.argwhere(np.isin(atlas, [reference.labels[n] for n in names]))
    lower, upper = found.min(axis=0), found.max(axis=0) + 1
    # RAS voxel order: the left caudate lies at lower axis-0 indices than the right one.
    left = np.argwhere(atlas == reference.labels["Left_Caudate"])[:, 0].mean()
    right = np.argwhere(atlas == reference.labels["Right_Caudate"])[:, 0].mean()
    assert left < right
    out = registration_qc(
        template,
        {"T1w": template, "Chimap": template / 1000},
        tuple(lower),
        tuple(upper),
        tmp_path / "qc.png",
        zooms=tuple(template_image.spacing),
        title="MNI152NLin2009cAsym at 2 mm",
    )
    width, height = png_size(out)
    assert 1500 < width < 2200 and 700 < height < 1100
