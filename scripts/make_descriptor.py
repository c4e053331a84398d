"""Write descriptor.json (Boutiques 0.5, BIDS App) from bids_qnet's argument parser.

The parser (bids_qnet/cli/parser.py, built from the option declarations in bids_qnet/config.py)
is the single source of the options: this script turns every option into a Boutiques input
(id = argparse dest, flag = its first long option string, type, choices, defaults and
list-ness from argparse, lower bounds from the declarations) and adds what the parser cannot
say: the BIDS App command line and output, the container image, resources, tests and CBRAIN's
keys.
tests/test_descriptor.py fails when descriptor.json and the parser disagree.

    python scripts/make_descriptor.py           # rewrite descriptor.json at the repo root
    python scripts/make_descriptor.py --check   # exit 1 if descriptor.json is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = ROOT / "descriptor.json"


#: Parser actions that print something and exit, and the parser-only spelling of output_dir:
#: no input in the descriptor.
NOT_INPUTS = {"help", "version", "bids_exec_spec", "output_dir_option"}

#: The output folder once more, glued to its flag. bosh 0.5.33 substitutes the inputs in
#: descriptor order and, for an absent input, deletes every " [OUTPUT_DIR]" that follows a
#: space: with output_dir_name absent (a group-level invocation with only
#: participant_level_analysis_dir) the positional output folder disappears. This occurrence
#: follows "=", survives, and participant_level_analysis_dir fills it; bids_qnet accepts the
#: output folder as --output-dir when the positional is missing (and checks that both agree
#: when both are there).
OUTPUT_DIR_AGAIN = "--output-dir=[OUTPUT_DIR]"

#: What each level needs (Boutiques has one "suggested-resources" per tool: the group level's,
#: the larger; these are in "custom" and docs/containers.md). Participant: one participant at 1 mm
#: with the precise profile; group: 100 participants, the paper's settings, on one GPU.
RESOURCES_BY_LEVEL = {
    "participant": {
        "cpu-cores": 2,
        "ram": 4,
        "disk-space": 1,
        "walltime-estimate": 1800,
        "gpu-cores": 0,
        "note": "per participant (one job each): about 11 min of registration on 2 cores with "
        "the precise profile; 2 GiB peak memory; 0.2 GB of outputs (0.1 GB with "
        "--no-inverse-transforms) plus the work folder",
    },
    "group": {
        "cpu-cores": 8,
        "ram": 16,
        "disk-space": 10,
        "walltime-estimate": 14400,
        "gpu-cores": 1,
        "note": "100 participants, 10 folds, 100 + 50 epochs on one GPU; about 0.5 GB of "
        "models and attribution maps",
    },
}

#: BIDS App inputs the CBRAIN BidsAppHandler and `bosh validate --bids` rely on, in that order.
BIDS_KEYS = ["bids_dir", "output_dir", "analysis_level", "participant_label", "session_label"]

#: Path options that name something bids_qnet creates, not an existing input file.
STRING_PATHS = {"work_dir"}


NAMES = {
    "bids_dir": "BIDS dataset",
    "analysis_level": "Analysis level",
    "output_dir_name": "Output folder name",
    "participant_level_analysis_dir": "Participant-level output folder",
    "skip_bids_validation": "Skip BIDS validation",
    "bids_filter_file": "BIDS filter file",
    "omp_nthreads": "OpenMP threads per process",
    "nprocs": "Processes",
    "mem": "Memory limit",
    "ig_steps": "Integrated Gradients steps",
    "ig_baseline": "Integrated Gradients baseline",
    "cv_repeats": "Cross-validation repeats",
    "qnet_epochs": "Q-Net epochs",
    "stage1": "Stage 1",
}

DEMO_OPTIONS = {
    "registration_profile": "fast",
    "embedding_weights": "random",
    "template_resolution": 2,
    "image_size": 64,
}


def _parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(ROOT))
    from bids_qnet.cli.parser import build_parser

    return build_parser()


def _bounds() -> dict[str, tuple[float, bool]]:
    """Lower bounds the parser leaves to bids_qnet.config.check_settings, by option dest."""
    sys.path.insert(0, str(ROOT))
    from bids_qnet.config import declarations

    return {
        spec.dest: (spec.minimum, spec.exclusive_minimum)
        for _, _, _, spec in declarations()
        if spec.minimum is not None
    }


def _name(dest: str) -> str:
    return NAMES.get(dest, dest.replace("_", " ").capitalize())


def _flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]


def _type(action: argparse.Action) -> tuple[str, dict]:
    extra: dict = {}
    if action.nargs == 0:
        return "Flag", extra
    if action.choices:
        extra["value-choices"] = [str(c) for c in action.choices]
        return "String", extra
    kind = getattr(action.type, "__name__", None)
    if kind == "int":
        extra["integer"] = True
        return "Number", extra
    if kind == "float":
        return "Number", extra
    if kind == "Path" and action.dest not in STRING_PATHS:
        return "File", extra
    return "String", extra


def _input(action: argparse.Action) -> dict:
    kind, extra = _type(action)
    entry = {
        "id": action.dest,
        "name": _name(action.dest),
        "type": kind,
        "value-key": f"[{action.dest.upper()}]",
        "description": (action.help or "").strip(),
        "optional": True,
        "command-line-flag": _flag(action),
    }
    if action.nargs == "+":
        entry.update({"list": True, "min-list-entries": 1})
    entry.update(extra)
    minimum, exclusive = _bounds().get(action.dest, (None, False))
    if minimum is not None:
        entry["minimum"] = minimum
    if exclusive:
        entry["exclusive-minimum"] = True
    default = action.default
    if kind != "Flag" and default not in (None, [], {}) and default != argparse.SUPPRESS:
        entry["default-value"] = list(default) if isinstance(default, list | tuple) else default
    if action.dest == "verbose":
        entry["description"] += " (a Boutiques flag gives one level: plain log lines)"
    return entry


def _bids_inputs(actions: dict[str, argparse.Action]) -> list[dict]:
    level = actions["analysis_level"]
    return [
        {
            "id": "bids_dir",
            "name": _name("bids_dir"),
            "type": "File",
            "value-key": "[BIDS_DIR]",
            "description": "Root of the BIDS dataset (read only; never written to).",
            "optional": False,
        },
        {
            "id": "output_dir_name",
            "name": _name("output_dir_name"),
            "type": "String",
            "value-key": "[OUTPUT_DIR]",
            "description": "Derivative dataset folder, at both levels: participant jobs write "
            "into it (they can share it) and the group level reads them from it and adds its "
            "results.",
            "optional": True,
        },
        {
            "id": "participant_level_analysis_dir",
            "name": _name("participant_level_analysis_dir"),
            "type": "File",
            "value-key": "[OUTPUT_DIR]",
            "description": "The participant level's derivative dataset, for the group level "
            "(BIDS App convention; output_dir_name works at both levels too). The command "
            "line then carries it as --output-dir (bosh drops the positional output folder "
            "when output_dir_name is absent).",
            "optional": True,
        },
        {
            "id": "analysis_level",
            "name": _name("analysis_level"),
            "type": "String",
            "value-key": "[ANALYSIS_LEVEL]",
            "description": level.help,
            "optional": False,
            "value-choices": list(level.choices),
        },
    ]


def _groups(parser: argparse.ArgumentParser, inputs: list[dict]) -> list[dict]:
    known = {i["id"] for i in inputs}
    groups = [
        {
            "id": "output_location",
            "name": "Output location",
            "description": "A new output folder (participant level) or the participant "
            "level's output folder (group level).",
            "members": ["output_dir_name", "participant_level_analysis_dir"],
            "mutually-exclusive": True,
            "one-is-required": True,
        }
    ]
    for group in parser._action_groups:
        members = [a.dest for a in group._group_actions if a.dest in known]
        members = [m for m in members if m not in ("bids_dir", "analysis_level")]
        if members:
            groups.append(
                {"id": group.title.replace(" ", "_"), "name": group.title, "members": members}
            )
    return groups


def _error_codes() -> list[dict]:
    from bids_qnet import errors

    text = {
        "EXIT_FAILURE": "failure (a participant or step failed; see the last lines of stderr)",
        "EXIT_VALIDATION": "the dataset failed BIDS validation",
        "EXIT_UNKNOWN_LEVEL": "unknown analysis level",
        "EXIT_NOTHING_SELECTED": "participant/session labels or filters selected nothing",
        "EXIT_USAGE": "usage error (bad option or inconsistent options)",
        "EXIT_DATA": "data error (unreadable or inconsistent input, registration failure)",
        "EXIT_NO_INPUT": "a required input is missing",
        "EXIT_CANT_CREATE": "cannot create the output",
        "EXIT_IO": "input/output error",
    }
    names = [k for k, v in vars(errors).items() if k.startswith("EXIT_") and v != 0]
    return [
        {
            "code": getattr(errors, k),
            "description": text.get(k, k.removeprefix("EXIT_").replace("_", " ").lower()),
        }
        for k in sorted(names, key=lambda k: getattr(errors, k))
    ]


def _tests() -> list[dict]:
    participant = {
        "bids_dir": "demo/bids",
        "output_dir_name": "demo/derivatives",
        "analysis_level": "participant",
        "participant_label": ["01", "02"],
        "nprocs": 2,
        **DEMO_OPTIONS,
    }
    group = {
        "bids_dir": "demo/bids",
        "output_dir_name": "demo/derivatives",
        "analysis_level": "group",
        "embedding_weights": "random",
        "stage1": "frozen",
        "folds": 2,
        "qnet_epochs": 2,
        "image_size": 64,
        "bootstrap_replicates": 200,
        "attribution": "none",
    }
    return [
        {
            "name": "demo participant level (first: bids_qnet-demo demo/bids --participants 4)",
            "invocation": participant,
            "assertions": {"exit-code": 0},
        },
        {
            "name": "demo group level on the participant-level outputs",
            "invocation": group,
            "assertions": {"exit-code": 0},
        },
    ]


def build_descriptor() -> dict:
    """Return the Boutiques descriptor of the installed checkout's parser.

    Returns
    -------
    dict
        The descriptor, ready for ``json.dumps``.
    """
    from bids_qnet import CODE_URL, __version__
    from bids_qnet.outputs.derivatives import IMAGE_REPOSITORY

    parser = _parser()
    actions = {a.dest: a for a in parser._actions}
    options = [
        a
        for a in parser._actions
        if a.option_strings and a.dest not in NOT_INPUTS and a.dest not in BIDS_KEYS
    ]
    labels = [_input(actions["participant_label"]), _input(actions["session_label"])]
    inputs = _bids_inputs(actions) + labels + [_input(a) for a in options]
    keys = " ".join(i["value-key"] for i in labels + [_input(a) for a in options])
    return {
        "name": "bids_qnet",
        "tool-version": __version__,
        "schema-version": "0.5",
        "author": "bids_qnet developers",
        "url": CODE_URL,
        "description": parser.description,
        "command-line": (
            f"mkdir -p [OUTPUT_DIR]; bids_qnet [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] {keys} "
            f"{OUTPUT_DIR_AGAIN}"
        ),
        "container-image": {
            "type": "singularity",
            "image": f"{IMAGE_REPOSITORY}:{__version__}",
            "index": "docker://",
            "container-opts": ["--nv"],
        },
        "inputs": inputs,
        "output-files": [
            {
                "id": "output_dir",
                "name": "Output folder",
                "description": "The BIDS derivative dataset (participant and group results).",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            }
        ],
        "groups": _groups(parser, inputs),
        "error-codes": _error_codes(),
        # One set per tool in Boutiques: the larger of the two levels (RESOURCES_BY_LEVEL).
        "suggested-resources": {
            key: max(level[key] for level in RESOURCES_BY_LEVEL.values())
            for key in ("cpu-cores", "ram", "disk-space", "walltime-estimate", "gpu-cores")
        },
        "tags": {
            "domain": ["neuroinformatics", "mri", "qsm", "deep-learning", "bids"],
            "application-type": "bids-app",
            "gpu": "optional",
        },
        "tests": _tests(),
        "custom": {
            "BIDSApplicationVersion": "2.0",
            "BIDSAppSpecVersion": "2.0",
            "cbrain:readonly-input-files": True,
            "cbrain:author": "bids_qnet developers",
            "cbrain:integrator_modules": {
                "BoutiquesOutputFileTypeSetter": {"output_dir": "BidsAppOutput"},
            },
            "bids_qnet:suggested-resources-by-level": RESOURCES_BY_LEVEL,
        },
    }


def render() -> str:
    """Return descriptor.json's text: the descriptor as indented JSON with a final newline."""
    return json.dumps(build_descriptor(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write descriptor.json, or with ``--check`` report whether it is up to date."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--check", action="store_true", help="exit 1 if descriptor.json differs")
    args = cli.parse_args(argv)
    text = render()
    if args.check:
        current = DESCRIPTOR.read_text() if DESCRIPTOR.is_file() else ""
        if current != text:
            print(f"{DESCRIPTOR} is out of date: run python scripts/make_descriptor.py")
            return 1
        return 0
    DESCRIPTOR.write_text(text)
    print(f"wrote {DESCRIPTOR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
