"""The settings: declared once, and the parser, checks, fingerprint and records derived."""

import argparse
from pathlib import Path

import pytest

from bids_qnet.cli.parser import build_parser
from bids_qnet.config import Settings, check_settings, declarations
from bids_qnet.errors import UsageError

#: The keys of the saved settings JSON, which older outputs and the model card were written with.
SAVED_KEYS = {
    *("bids_dir", "output_dir", "analysis_level", "participant_label", "session_label"),
    *("bids_filters", "derivatives", "work_dir", "nprocs", "omp_nthreads", "mem_gb", "plugin"),
    *("plugin_settings", "device", "random_seed", "skip_bids_validation", "channels"),
    *("reference_channel", "crop", "crop_regions", "crop_margin_mm", "registration_profile"),
    *("template", "atlas", "template_resolution", "embedding_weights", "embedding_batch_size"),
    *("image_size", "label_column", "classes", "positive_class", "bins", "folds", "cv_repeats"),
    *("fold", "stage1", "epochs", "qnet_epochs", "bootstrap_replicates", "attribution"),
    *("preset", "regions", "covariates"),  # added with the ROI baseline and the presets
    *("attribution_target", "ig_steps", "ig_max_steps", "ig_baseline", "model", "overwrite"),
    "verbose",
    *("run_id", "version", "software"),
    # 0.3: new options (the keys above keep their meaning)
    *("config_file", "inverse_transforms", "stop_on_first_crash", "reports_only"),
    "boilerplate_only",
}


def _settings(*argv):
    return Settings.from_arguments(build_parser().parse_args(["/in", "/out", "group", *argv]))


def test_every_option_is_one_field_and_one_argument():
    fields = [name for _, _, name, _ in declarations()]
    dests = [spec.dest for _, _, _, spec in declarations()]
    assert len(set(fields)) == len(fields) and len(set(dests)) == len(dests)
    parsed = vars(build_parser().parse_args(["/in", "/out", "participant"]))
    parser_only = {"bids_exec_spec", "output_dir_option"}
    assert set(parsed) - parser_only == {"bids_dir", "output_dir", "analysis_level", *dests}


def test_saved_settings_keep_their_keys():
    assert set(_settings().to_dict()) == SAVED_KEYS


def test_defaults_come_from_the_declarations():
    settings = _settings()
    parsed, created = settings.to_dict(), Settings.create("/in", "/out", "group").to_dict()
    assert {**parsed, "run_id": ""} == {**created, "run_id": ""}
    assert settings.training.folds == 10 and settings.embedding.image_size == 224
    assert settings.inputs.reference_channel == "T1w"
    assert settings.execution.work_dir == Path("/out/sourcedata/bids_qnet_work")


def test_arguments_fill_their_sections():
    settings = _settings(
        "--batch-size", "8", "--crop-margin", "2", "--mem", "2G", "-d", "q=/d/qsm", "--folds", "3"
    )
    assert settings.embedding.embedding_batch_size == 8
    assert settings.preprocessing.crop_margin_mm == 2.0
    assert settings.execution.mem_gb == 2.0
    assert settings.inputs.derivatives == {"q": Path("/d/qsm")}
    assert settings.training.folds == 3


def test_fingerprint_follows_the_output_defining_options_only():
    base = _settings().output_fingerprint()
    assert (
        _settings("--epochs", "3", "--batch-size", "8", "--nprocs", "4").output_fingerprint()
        == base
    )
    for argv in (["--image-size", "64"], ["--crop", "full"], ["--template-resolution", "2"]):
        assert _settings(*argv).output_fingerprint() != base, argv


def test_training_record_lists_what_defines_the_training():
    record = _settings("--epochs", "3").training_record()
    assert set(record) == {
        *("stage1", "epochs", "qnet_epochs", "embedding_batch_size", "image_size"),
        *("embedding_weights", "random_seed", "label_column", "classes", "positive_class"),
        *("bins", "version", "preset", "regions", "covariates"),
    }
    assert record["epochs"] == 3 and record["qnet_epochs"] == 100  # the preset's
    assert _settings("--preset", "paper").training_record()["epochs"] == 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--folds", "1"], "--folds must be at least 2"),
        (["--crop-margin", "-1"], "--crop-margin must not be negative"),
        (["--template-resolution", "0"], "--template-resolution must be positive"),
        (["--channels", "T1w", "T1w"], "lists a suffix twice"),
    ],
)
def test_bounds_are_checked(argv, message):
    with pytest.raises(UsageError, match=message):
        check_settings(_settings(*argv))


def test_help_states_each_default_once():
    text = build_parser().format_help()
    assert "(default: None)" not in text
    assert text.count("(default: all)") == 2
    assert "'focused' (default: SyN around the crop" in text
    assert "(default: focused)" not in text
    assert "(default: 10)" in text  # --folds


def test_positionals_are_declared_too():
    parser = build_parser()
    positional = [a for a in parser._actions if not a.option_strings]
    assert [a.dest for a in positional] == ["bids_dir", "output_dir", "analysis_level"]
    assert isinstance(parser, argparse.ArgumentParser)
