"""``--config FILE``: options from a TOML file, named as on the command line.

Keys are the options' long names without the leading dashes, with ``-`` or ``_``
(``registration-profile = "fast"``, ``folds = 4``, ``participant_label = ["01", "02"]``,
``no-inverse-transforms = true``, ``verbose = 1``). Values become the parser's defaults, so
the command line overrides them; every value goes through the option's own type and choices,
and the settings saved with the outputs record both the file (``config_file``) and the values
used. Relative paths are taken from the current folder, as on the command line.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from bids_qnet.errors import MissingInputError, UsageError

#: Options a file cannot set (they print and exit, or name the file itself).
NOT_IN_FILE = {"help", "version", "bids_exec_spec", "config", "output_dir_option"}


class ConfigFileError(UsageError):
    """The ``--config`` file cannot be used (exit 64; 66 when it is missing)."""


class MissingConfigFile(ConfigFileError, MissingInputError):
    """The ``--config`` file does not exist."""

    exit_code = MissingInputError.exit_code


def option_names(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Return every name a config file may use, mapped to its parser action."""
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_IN_FILE:
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                names[flag[2:]] = names[flag[2:].replace("-", "_")] = action
        names.setdefault(action.dest, action)
    return names


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a TOML config file into parser defaults (``dest`` -> value).

    Parameters
    ----------
    path : Path
        The TOML file.
    parser : argparse.ArgumentParser
        The bids_qnet parser, whose actions give each key's type and choices.

    Returns
    -------
    dict
        Argparse destination -> value, ready for ``parser.set_defaults``.

    Raises
    ------
    MissingConfigFile
        The file does not exist (exit 66).
    ConfigFileError
        Not TOML, an unknown key, or a value the option refuses (exit 64).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingConfigFile(f"--config {path}: no such file")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"--config {path} is not valid TOML: {exc}") from exc
    names = option_names(parser)
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigFileError(
            f"--config {path}: unknown option(s) {', '.join(unknown)}; the keys are the "
            "long option names without the dashes (see bids_qnet --help)"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        action = names[key]
        if action.dest in values:
            raise ConfigFileError(f"--config {path}: {key} is set twice (under two spellings)")
        try:
            values[action.dest] = _value(action, value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigFileError(f"--config {path}: {key} = {value!r}: {exc}") from exc
    return values


def _value(action: argparse.Action, value: Any) -> Any:
    """Convert one TOML value as the command line would convert it."""
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("a count (0, 1, 2, ...)")
        return value
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if action.nargs == "+":
        if isinstance(value, dict):  # -d as a table: {qsmxt = "/data/qsmxt"}
            value = [f"{k}={v}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("an empty list")
        return [_scalar(action, item) for item in items]
    if isinstance(value, dict) and getattr(action.type, "__name__", "") == "json_object":
        return value  # --plugin-settings as a table
    return _scalar(action, value)


def _scalar(action: argparse.Action, value: Any) -> Any:
    if isinstance(value, dict | list) or isinstance(value, bool):
        raise ValueError("a single value")
    converted = action.type(str(value)) if action.type is not None else str(value)
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"one of {', '.join(map(str, action.choices))}")
    return converted
