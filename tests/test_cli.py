import json
import subprocess
import sys

import pytest

from bids_qnet import __version__
from bids_qnet.cli.parser import build_parser
from bids_qnet.cli.run import main
from bids_qnet.errors import EXIT_UNKNOWN_LEVEL, EXIT_USAGE


def test_version_needs_no_positionals(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_version():
    result = subprocess.run(
        [sys.executable, "-m", "bids_qnet.cli.run", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"bids_qnet {__version__}"


def test_unknown_analysis_level_exits_17(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "session-level"])
    assert exit_info.value.code == EXIT_UNKNOWN_LEVEL


def test_bad_option_exits_64_not_2(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([str(tmp_path), str(tmp_path), "participant", "--nope"])
    assert exit_info.value.code == EXIT_USAGE


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_participant_label_aliases(flag, tmp_path):
    args = build_parser().parse_args(["in", "out", "participant", flag, "sub-01", "02"])
    assert args.participant_label == ["sub-01", "02"]


@pytest.mark.parametrize(
    "flag", ["--skip-bids-validation", "--skip_bids_validation", "--skip_bids_validator"]
)
def test_skip_validation_aliases(flag):
    assert build_parser().parse_args(["in", "out", "participant", flag]).skip_bids_validation


def test_mem_units():
    parse = build_parser().parse_args
    assert parse(["i", "o", "participant", "--mem", "16G"]).mem == 16
    assert parse(["i", "o", "participant", "--mem", "2048M"]).mem == 2


def test_output_inside_bids_dir_is_refused(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0"})
    )
    code = main([str(bids), str(bids / "derivatives" / "qnet"), "participant"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "inside bids_dir" in err and err.count("\n") == 1
    assert sorted(p.name for p in bids.iterdir()) == ["dataset_description.json"]


def test_work_dir_inside_bids_dir_is_refused(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(bids / "work")])
    assert code == EXIT_USAGE
    assert "--work-dir" in capsys.readouterr().err


def test_not_a_bids_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = main([str(tmp_path / "data"), str(tmp_path / "out"), "participant"])
    assert code == 65
    err = capsys.readouterr().err
    assert "not a BIDS dataset" in err and "dataset_description.json" in err
    assert not (tmp_path / "out").exists()


def test_missing_bids_dir(tmp_path, capsys):
    code = main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "participant"])
    assert code == 66
    assert "does not exist" in capsys.readouterr().err


def test_unsafe_label_refused(tmp_path, capsys):
    code = main(
        [str(tmp_path / "b"), str(tmp_path / "o"), "participant", "--participant-label", "0;1"]
    )
    assert code == EXIT_USAGE
    assert "not a BIDS label" in capsys.readouterr().err


def test_reference_channel_must_be_a_channel(tmp_path, capsys):
    code = main(
        [
            str(tmp_path / "b"),
            str(tmp_path / "o"),
            "participant",
            "--channels",
            "Chimap",
            "--reference-channel",
            "T1w",
        ]
    )
    assert code == EXIT_USAGE
    assert "--reference-channel" in capsys.readouterr().err
