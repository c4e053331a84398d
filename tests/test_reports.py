import base64
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bids_qnet import __version__
from bids_qnet.reports import participant as participant_module
from bids_qnet.reports.figures import registration_qc, robust_window, slice_montage
from bids_qnet.reports.participant import write_participant_report

from .images import assert_drawn, has_hue, png_pixels

SHAPE = (40, 48, 40)
BOX = ((12, 18, 14), (28, 32, 26))


def png_size(path: Path) -> tuple[int, int]:
    height, width = png_pixels(path).shape[:2]
    return width, height


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
    pixels = assert_drawn(out, min_colours=64)  # grey images under coloured outlines
    assert has_hue(pixels, 0) and has_hue(pixels, 1)  # red brain edge, yellow box
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
    pixels = assert_drawn(out, min_colours=256)  # random slices, grey and the RGB row
    assert has_hue(pixels, 0) and has_hue(pixels, 1) and has_hue(pixels, 2)
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
    assert "<h1>sub-01, ses-1</h1>" in text and f"bids_qnet {__version__}" in text
    # Every value is escaped: the page runs no script and shows the text as written.
    assert "<script>" not in text
    assert "&lt;script&gt;alert(" in text
    assert "mask overlap 0.71 &lt; 0.8 &amp; low" in text and 'id="warnings"' in text
    assert "&lt;b&gt;" in text and "20240101-run1" in text
    for snippet in ("0.912", "12.3", "-0.15, 0.35", "Left Caudate, Right Caudate", "ab" * 32):
        assert snippet in text
    # Words instead of sidecar keys; records become one table.
    assert "<th>Voxel size (mm)</th>" in text and "<th>Matrix (voxels)</th>" in text
    assert "Weights checksum (SHA-256)" in text and "WeightsSHA256" not in text
    # Figures are embedded: the page stands alone.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2 and base64.b64decode(images[0])[:4] == b"\x89PNG"
    for name in ("registration_qc", "bgcrop_slices"):
        assert f"sub-01/figures/sub-01_ses-1_desc-{name}.png" in text  # named in the caption
    assert "Registration to the template" in text and "Slice stack" in text
    assert "http" not in text.replace("http-equiv", "")  # self-contained: nothing fetched
    assert 'href="group.html"' in text  # the group report, beside the page
    for section in ("summary", "figures", "inputs", "processing", "errors", "about"):
        assert f'id="{section}"' in text


def test_participant_report_quality_checks_and_no_contradiction(report_inputs):
    out_dir, _, figures = report_inputs
    from bids_qnet.preprocess.quality import assess

    metrics = {"abs_brain_correlation": 0.72, "coverage": 0.999, "mask_overlap": 0.81}
    summary = {
        "QualityChecks": assess(metrics, {"min_abs_brain_correlation": 0.4}, {"T1w": 0}),
        "Co-registration": {
            "Grids": [["Chimap", "R2starmap", "T1w"]],
            "CoregisteredVia": {},
            "CoregistrationTransform": "Rigid",
        },
        "Settings": {"reference_channel": "T1w"},
        "Errors": ["sub-01: registration failed <here>"],
    }
    text = write_participant_report(
        out_dir, "01", None, summary, figures, out_dir / "sub-01.html"
    ).read_text()
    quality = text.split('id="quality"')[1].split("</section>")[0]
    assert "at least 0.4 required; at least 0.8 expected" in quality
    assert '<span class="badge check">check</span>' in quality  # 0.72: borderline
    assert '<span class="badge pass">pass</span>' in quality  # coverage 99.9 %
    assert '<span class="badge info">info</span>' in quality  # overlap: no threshold
    assert "99.9%" in quality
    processing = text.split('id="processing"')[1].split("</section>")[0]
    assert "Not needed" in processing and "Rigid" not in processing
    errors = text.split('id="errors"')[1].split("</section>")[0]
    assert "registration failed &lt;here&gt;" in errors and "did not complete" in text


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
    from bids_qnet.inputs.reference import atlas_on_grid, load_reference, template_on_grid

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


def test_a_failed_participant_gets_a_report_naming_its_error(tmp_path):
    from types import SimpleNamespace

    from bids_qnet.config import Settings
    from bids_qnet.errors import InputDataError
    from bids_qnet.inputs.bids_dataset import Problem
    from bids_qnet.workflows.run_participant import write_failure_report

    settings = Settings.create(tmp_path / "bids", tmp_path / "out", "participant")
    run = SimpleNamespace(grid=SimpleNamespace(space="MNI152NLin2009cAsym"), command_line="cmd")
    error = InputDataError("Chimap is empty (crash file: crash-1.txt)")
    info = {"sub-07": {"T1w": {"file": "sub-07_T1w.nii.gz", "shape": [4, 4, 4]}}}
    write_failure_report(settings, run, Problem("07", None, error), info)
    page = (tmp_path / "out" / "sub-07.html").read_text()
    assert "This participant did not complete" in page
    errors = page.split('id="errors"')[1]
    assert "Chimap is empty (crash file: crash-1.txt)" in errors
    assert "sub-07_T1w.nii.gz" in page  # the inputs it was given
    assert 'href="#processing"' not in page and 'href="#inputs"' in page  # no empty sections
