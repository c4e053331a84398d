"""descriptor.json: valid for Boutiques and CBRAIN, and the same options as the CLI parser."""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bids_qnet import __version__
from bids_qnet.cli.parser import build_parser
from bids_qnet.demo import make_demo_dataset
from bids_qnet.outputs.derivatives import is_complete

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "descriptor.json"
BIN = Path(sys.executable).parent
#: Parser actions that print and exit, and the parser-only spelling of output_dir (the
#: descriptor's command line uses it, no input sets it).
NOT_INPUTS = {"help", "version", "bids_exec_spec", "output_dir_option"}


@pytest.fixture(scope="module")
def descriptor():
    return json.loads(DESCRIPTOR.read_text())


@pytest.fixture(scope="module")
def options():
    """dest -> argparse action, for every option that belongs in the descriptor."""
    return {
        a.dest: a for a in build_parser()._actions if a.option_strings and a.dest not in NOT_INPUTS
    }


def _bosh(*args, cwd=None, env=None):
    return subprocess.run(
        [str(BIN / "bosh"), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_bosh_validate_bids():
    result = _bosh("validate", "--bids", str(DESCRIPTOR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BIDS validation OK" in result.stdout + result.stderr


def test_every_cli_option_is_an_input_and_back(descriptor, options):
    flagged = {i["command-line-flag"]: i for i in descriptor["inputs"] if "command-line-flag" in i}
    missing = [
        "/".join(a.option_strings)
        for a in options.values()
        if not set(a.option_strings) & set(flagged)
    ]
    known = {s: a for a in options.values() for s in a.option_strings}
    unknown = [flag for flag in flagged if flag not in known]
    hint = "; run `python scripts/make_descriptor.py` to regenerate descriptor.json"
    assert not missing, f"CLI options missing from descriptor.json: {missing}{hint}"
    assert not unknown, f"descriptor.json flags the CLI does not know: {unknown}{hint}"
    # One input per option (aliases are not listed twice) and its id is the argparse dest.
    for flag, entry in flagged.items():
        assert entry["id"] == known[flag].dest
    assert len(flagged) == len(options)


def test_types_choices_defaults_and_lists_follow_the_parser(descriptor, options):
    inputs = {i["id"]: i for i in descriptor["inputs"]}
    for dest, action in options.items():
        entry = inputs[dest]
        assert (entry["type"] == "Flag") == (action.nargs == 0), dest
        assert entry.get("list", False) == (action.nargs == "+"), dest
        if action.choices:
            assert entry["value-choices"] == list(action.choices), dest
        if getattr(action.type, "__name__", None) == "int":
            assert entry["type"] == "Number" and entry["integer"], dest
        if "default-value" in entry:
            # bosh passes defaults explicitly: they must be the parser's own.
            assert entry["default-value"] == action.default, dest
        elif entry["type"] != "Flag":
            assert action.default in (None, [], {}), f"{dest}: default {action.default} missing"


def test_descriptor_is_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_descriptor.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_version_and_image_follow_the_package(descriptor):
    assert descriptor["tool-version"] == __version__
    image = descriptor["container-image"]
    assert image == {
        "type": "singularity",
        "image": f"bidsqnet/bids_qnet:{__version__}",
        "index": "docker://",
        "container-opts": ["--nv"],
    }


def test_what_cbrain_bidsapphandler_needs(descriptor):
    inputs = {i["id"]: i for i in descriptor["inputs"]}
    for required in ("bids_dir", "analysis_level", "participant_label", "output_dir_name"):
        assert required in inputs
    assert inputs["participant_label"]["type"] == "String" and inputs["participant_label"]["list"]
    assert "session_label" in inputs
    assert set(inputs["analysis_level"]["value-choices"]) == {"participant", "group"}
    assert [o["id"] for o in descriptor["output-files"]] == ["output_dir"]
    # CBRAIN drops exactly this group when it takes over the output folder.
    mutex = [g for g in descriptor["groups"] if g.get("mutually-exclusive")]
    assert [sorted(g["members"]) for g in mutex] == [
        ["output_dir_name", "participant_level_analysis_dir"]
    ]
    assert mutex[0]["one-is-required"]
    custom = descriptor["custom"]
    assert custom["BIDSApplicationVersion"] == custom["BIDSAppSpecVersion"] == "2.0"
    assert custom["cbrain:readonly-input-files"] is True
    assert {"cbrain:author", "cbrain:integrator_modules"} <= set(custom)
    assert descriptor["suggested-resources"]["gpu-cores"] == 1


def test_error_codes_are_bep027s(descriptor):
    from bids_qnet import errors

    codes = {e["code"] for e in descriptor["error-codes"]}
    expected = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and v != 0}
    assert codes == expected


def test_bids_exec_spec_prints_descriptor_json():
    result = subprocess.run(
        [sys.executable, "-m", "bids_qnet.cli.run", "--bids-exec-spec"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == DESCRIPTOR.read_text()


def test_wheel_carries_the_root_descriptor():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    force = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force == {"descriptor.json": "bids_qnet/data/descriptor.json"}
    assert not (ROOT / "bids_qnet" / "data" / "descriptor.json").exists(), "a second copy"


# --------------------------------------------------------------------------- bosh exec
def _participant_invocation(tmp: Path) -> dict:
    filters = tmp / "filters.json"
    filters.write_text('{"Chimap": {"acquisition": null}}')
    return {
        "bids_dir": str(tmp / "bids"),
        "output_dir_name": str(tmp / "out"),
        "analysis_level": "participant",
        "participant_label": ["01", "sub-02"],
        "session_label": ["1"],
        "bids_filter_file": str(filters),
        "derivatives": [f"qsmxt={tmp / 'qsmxt'}"],
        "skip_bids_validation": True,
        "channels": ["Chimap", "R2starmap"],
        "reference_channel": "R2starmap",
        "registration_profile": "fast",
        "template_resolution": 2,
        "embedding_weights": "random",
        "image_size": 64,
        "work_dir": str(tmp / "work dir"),
        "nprocs": 2,
        "mem": "8G",
        "plugin_settings": '{"sbatch_args": "-p short"}',
        "device": "cpu",
        "overwrite": True,
        "verbose": True,
    }


def _group_invocation(tmp: Path) -> dict:
    return {
        "bids_dir": str(tmp / "bids"),
        "output_dir_name": str(tmp / "out"),
        "analysis_level": "group",
        "label_column": "diagnosis",
        "classes": ["HC", "PD"],
        "positive_class": "PD",
        "folds": 5,
        "cv_repeats": 2,
        "fold": 3,
        "stage1": "frozen",
        "epochs": 7,
        "qnet_epochs": 9,
        "bootstrap_replicates": 500,
        "attribution": "ig",
        "attribution_target": "predicted",
        "ig_steps": 16,
        "ig_baseline": "blur",
        "random_seed": 11,
    }


def _simulate(invocation: dict, tmp: Path) -> argparse.Namespace:
    path = tmp / "invocation.json"
    path.write_text(json.dumps(invocation))
    result = _bosh("exec", "simulate", "-i", str(path), str(DESCRIPTOR))
    assert result.returncode == 0, result.stdout + result.stderr
    command = result.stdout.split("Generated Command:", 1)[1].strip()
    mkdir, _, run = command.partition("; ")
    words = shlex.split(run)
    assert words[0] == "bids_qnet"
    args = build_parser().parse_args(words[1:])  # exits 64 on anything the CLI refuses
    if "output_dir_name" in invocation:
        assert shlex.split(mkdir) == ["mkdir", "-p", str(args.output_dir)]
    else:  # bosh leaves "mkdir -p" bare; the group level's folder exists already
        assert shlex.split(mkdir) == ["mkdir", "-p"]
    return args


def _expected(value, action):
    if isinstance(action, argparse._StoreFalseAction):
        return not value
    if action is not None and action.nargs == 0:
        return 1 if isinstance(action, argparse._CountAction) else value
    if isinstance(value, list):
        return [action.type(v) if callable(action.type) else v for v in value]
    return action.type(value) if callable(action.type) else value


OUTPUT_KEYS = ("output_dir_name", "participant_level_analysis_dir")


def _check(args: argparse.Namespace, invocation: dict, options: dict) -> None:
    assert str(args.bids_dir) == invocation["bids_dir"]
    output = next(invocation[k] for k in OUTPUT_KEYS if k in invocation)
    assert str(args.output_dir) == output
    assert args.analysis_level == invocation["analysis_level"]
    for key, value in invocation.items():
        if key in ("bids_dir", "analysis_level", *OUTPUT_KEYS):
            continue
        assert getattr(args, key) == _expected(value, options[key]), key


@pytest.mark.parametrize("make", [_participant_invocation, _group_invocation])
def test_simulated_command_lines_are_accepted_by_the_parser(make, tmp_path, options):
    invocation = make(tmp_path)
    _check(_simulate(invocation, tmp_path), invocation, options)


def test_descriptor_tests_simulate_to_valid_command_lines(descriptor, tmp_path, options):
    for case in descriptor["tests"]:
        _check(_simulate(case["invocation"], tmp_path), case["invocation"], options)


#: Every shape of invocation the descriptor allows, as docs/containers.md documents them.
SHAPES = {
    "participant, output_dir_name (CBRAIN)": {
        "bids_dir": "MyStudy",
        "output_dir_name": "outdir-17-1",
        "analysis_level": "participant",
        "participant_label": ["001"],
    },
    "participant, every participant, a session": {
        "bids_dir": "/data/bids",
        "output_dir_name": "/data/derivatives/bids_qnet",
        "analysis_level": "participant",
        "session_label": ["1"],
        "no_inverse_transforms": True,
    },
    "group, output_dir_name (CBRAIN)": {
        "bids_dir": "MyStudy",
        "output_dir_name": "outdir-17-1",
        "analysis_level": "group",
        "folds": 4,
    },
    "group, participant_level_analysis_dir (BIDS App convention)": {
        "bids_dir": "/data/bids",
        "participant_level_analysis_dir": "/data/derivatives/bids qnet",
        "analysis_level": "group",
        "folds": 4,
    },
    "group, participant_level_analysis_dir, reports only": {
        "bids_dir": "/data/bids",
        "participant_level_analysis_dir": "/data/out",
        "analysis_level": "group",
        "reports_only": True,
    },
    "participant, config file and a cluster plugin": {
        "bids_dir": "/data/bids",
        "output_dir_name": "/data/out",
        "analysis_level": "participant",
        "config": "{tmp}/qnet.toml",
        "plugin": "SLURM",
        "stop_on_first_crash": True,
    },
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_invocation_shape_simulates_to_a_valid_command(shape, tmp_path, options):
    invocation = {
        k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in SHAPES[shape].items()
    }
    (tmp_path / "qnet.toml").write_text("folds = 4\n")
    _check(_simulate(invocation, tmp_path), invocation, options)


@pytest.mark.parametrize("output_key", OUTPUT_KEYS)
@pytest.mark.parametrize("make", [_participant_invocation, _group_invocation])
def test_either_output_input_at_either_level(make, output_key, tmp_path, options):
    # The descriptor lets any level take its output folder from either input.
    invocation = make(tmp_path)
    invocation[output_key] = invocation.pop("output_dir_name")
    config = tmp_path / "qnet.toml"
    config.write_text('registration-profile = "fast"\n')
    invocation.update(config=str(config), stop_on_first_crash=True, no_inverse_transforms=True)
    _check(_simulate(invocation, tmp_path), invocation, options)


def test_both_output_inputs_are_refused_by_bosh(tmp_path):
    invocation = {
        **SHAPES["group, output_dir_name (CBRAIN)"],
        "participant_level_analysis_dir": "x",
    }
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    assert _bosh("exec", "simulate", "-i", str(path), str(DESCRIPTOR)).returncode != 0


def test_each_level_has_its_suggested_resources(descriptor):
    by_level = descriptor["custom"]["bids_qnet:suggested-resources-by-level"]
    assert set(by_level) == {"participant", "group"}
    assert by_level["participant"]["gpu-cores"] == 0 and by_level["group"]["gpu-cores"] == 1
    top = descriptor["suggested-resources"]
    assert all(top[k] >= by_level[level][k] for level in by_level for k in top)


def test_cbrain_style_invocation_without_optional_inputs(tmp_path):
    invocation = {
        "bids_dir": "MyStudy",
        "output_dir_name": "outdir-17-1",
        "analysis_level": "participant",
        "participant_label": ["001"],
    }
    args = _simulate(invocation, tmp_path)
    # --epochs is left to the preset (None on the command line)
    assert (args.embedding_weights, args.folds, args.epochs) == ("imagenet", 10, None)


# --------------------------------------------------------------------------- bosh exec launch
@pytest.mark.slow
def test_bosh_launch_runs_the_participant_level(tmp_path):
    demo = make_demo_dataset(tmp_path / "bids", n_participants=1, seed=4, resolution=2.0)
    out = tmp_path / "out"
    invocation = {
        "bids_dir": str(demo.bids_dir),
        "output_dir_name": str(out),
        "analysis_level": "participant",
        "participant_label": ["01"],
        "registration_profile": "fast",
        "embedding_weights": "random",
        "template_resolution": 2,
        "image_size": 64,
        "work_dir": str(tmp_path / "work"),
        "random_seed": 7,
    }
    (tmp_path / "invocation.json").write_text(json.dumps(invocation))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = _bosh(
        "exec",
        "launch",
        "--no-container",
        "--skip-data-collection",
        str(DESCRIPTOR),
        str(tmp_path / "invocation.json"),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (out / "dataset_description.json").is_file() and (out / "sub-01.html").is_file()
    stem = "sub-01_space-MNI152NLin2009cAsym_res-2"
    anat = out / "sub-01" / "anat"
    expected = [anat / f"{stem}_desc-bgcrop_{s}.npy" for s in ("slices", "embeddings")]
    expected += [anat / f"{stem}_{c}.nii.gz" for c in ("Chimap", "R2starmap", "T1w")]
    expected += [anat / f"{stem}_desc-bgcrop_{c}.nii.gz" for c in ("Chimap", "R2starmap", "T1w")]
    assert all(is_complete(p) for p in expected), [p.name for p in expected if not is_complete(p)]
    data = [p for p in anat.iterdir() if not p.name.endswith(".json")]
    assert all(is_complete(p) for p in data), [p.name for p in data if not is_complete(p)]
