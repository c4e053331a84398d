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


@pytest.mark.parametrize("argv", [[], ["in"], ["in", "out"]])
def test_missing_arguments_exit_64(argv, capsys):
    """``bids_qnet`` alone is a usage error (64), not an unknown analysis level (17)."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bids_qnet: error: the following arguments are required")


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


def test_help_documents_every_option_once_with_consistent_metavars():
    text = build_parser().format_help()
    assert "(default: None)" not in text and "[" + "'" not in text  # no Python reprs
    assert "(default: Chimap R2starmap T1w)" in text
    for action in build_parser()._actions:
        if action.option_strings:
            assert action.help, f"{action.option_strings} has no help"
            metavar = action.metavar or ""
            assert metavar == metavar.upper() or "|" in metavar, action.option_strings
    assert "--random-seed N" in text and "--device {auto,cpu,cuda}" in text
    assert "the cores available to this process" in " ".join(text.split())
    flat = " ".join(text.split())
    for shown in (
        "--cv-repeats N repeats of the cross-validation (default: 1)",
        "(ITK, torch) (default: 1)",
        "output grid (default: 1.0)",
    ):
        assert shown in flat  # defaults equal to 1 or 1.0 are shown too (1 == True)
    assert "(default: 0)" not in flat  # -v is a count, not a value
    for action in build_parser()._actions:
        if action.option_strings:
            assert (action.help or "").count("(default") <= 1


def test_nprocs_defaults_to_the_cores_this_process_may_use():
    import os

    from bids_qnet.config import Settings

    settings = Settings.from_arguments(build_parser().parse_args(["i", "o", "participant"]))
    assert 1 <= settings.execution.nprocs <= len(os.sched_getaffinity(0))
    explicit = build_parser().parse_args(["i", "o", "participant", "--nprocs", "3"])
    assert Settings.from_arguments(explicit).execution.nprocs == 3


def test_output_dir_as_an_option_and_positionals_after_options(tmp_path, capsys):
    parse = build_parser().parse_args
    args = parse(["--folds", "3", "bids", "group", "--output-dir", "out"])
    assert (str(args.bids_dir), str(args.output_dir), args.analysis_level) == (
        "bids",
        "out",
        "group",
    )
    both = parse(["bids", "out", "participant", "--output-dir=out"])
    assert str(both.output_dir) == "out"
    with pytest.raises(SystemExit) as exit_info:
        parse(["bids", "out", "participant", "--output-dir", "elsewhere"])
    assert exit_info.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as exit_info:
        parse(["bids", "participant"])
    assert exit_info.value.code == EXIT_USAGE
    assert "output_dir" in capsys.readouterr().err


def test_config_file_values_under_command_line_values(tmp_path):
    from bids_qnet.config import Settings

    config = tmp_path / "qnet.toml"
    config.write_text(
        'folds = 4\nregistration-profile = "fast"\nparticipant_label = ["01", "02"]\n'
        "skip-bids-validation = true\nno-inverse-transforms = true\nverbose = 1\n"
        'template-resolution = 2\n[plugin-settings]\nsbatch_args = "-p short"\n'
    )
    args = build_parser().parse_args(["i", "o", "group", "--config", str(config), "--folds", "6"])
    settings = Settings.from_arguments(args)
    assert settings.training.folds == 6  # the command line wins
    assert settings.preprocessing.registration_profile == "fast"
    assert settings.preprocessing.template_resolution == 2.0
    assert settings.preprocessing.inverse_transforms is False
    assert settings.inputs.participant_label == ["01", "02"]
    assert settings.inputs.skip_bids_validation and settings.execution.verbose == 1
    assert settings.execution.plugin_settings == {"sbatch_args": "-p short"}
    assert settings.to_dict()["config_file"] == str(config.absolute())  # recorded


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        ("fodls = 4\n", EXIT_USAGE, "unknown option(s) fodls"),
        ('folds = "four"\n', EXIT_USAGE, "folds = 'four'"),
        ('crop = "half"\n', EXIT_USAGE, "one of bg, full"),
        ("folds = [\n", EXIT_USAGE, "not valid TOML"),
        (None, 66, "no such file"),
    ],
)
def test_config_file_errors(tmp_path, capsys, content, code, message):
    config = tmp_path / "qnet.toml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["i", "o", "group", "--config", str(config)])
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err


def test_device_choice_is_said_with_its_reason(monkeypatch):
    import torch

    from bids_qnet.models.device import choose_device, cpu_reason

    device, text = choose_device("cpu")
    assert device.type == "cpu" and text == "cpu (--device cpu)"
    if torch.version.cuda is None:
        assert "no CUDA support" in cpu_reason()
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert cpu_reason() == "CUDA_VISIBLE_DEVICES hides every GPU"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        assert "finds no GPU or driver" in cpu_reason()
    device, text = choose_device("auto")
    if device.type == "cpu":
        assert text.startswith("cpu (--device auto: ")
    else:
        assert torch.cuda.get_device_name(device) in text
