"""How a setting is declared: its :class:`Option` (flags, help, type, bounds, what it defines).

:func:`option` makes a dataclass field that carries its :class:`Option`; the parser, the checks,
the fingerprint and the training record read the declarations back
(:func:`bids_qnet.config.settings.declarations`). The argument types of the options that need
one (``-d``, ``--mem``, ``--plugin-settings``) are here too.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: :attr:`Option.cli_default` when the parser's default is the setting's own.
AS_SETTING = object()


@dataclass(frozen=True)
class Option:
    """How a setting appears on the command line and what it stands for.

    Attributes
    ----------
    flags : tuple of str
        Command-line flags, the first long one naming the option (its argparse ``dest`` and
        Boutiques id: ``--batch-size`` -> ``batch_size``); none for a positional argument.
    help : str
        Help text.
    type, choices, nargs, metavar, action
        As for :meth:`argparse.ArgumentParser.add_argument`.
    default_text : str or None
        Shown as ``(default: TEXT)`` where the default is no plain value.
    cli_default : object
        The parser's default when it is not the setting's (the option names a file the setting
        is read from).
    minimum : float or None
        Lower bound, checked by :func:`check_settings` and given to the descriptor.
    exclusive_minimum : bool
        The bound itself is not allowed.
    convert : callable or None
        Turns the parsed value into the setting (paths become absolute without it).
    defines_outputs : bool
        Part of the participant-level fingerprint: changing it changes the derivatives.
    defines_training : bool
        Part of the group-level training record: a fold made otherwise is recomputed.
    """

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None
    action: str | None = None
    default_text: str | None = None
    cli_default: Any = AS_SETTING
    minimum: float | None = None
    exclusive_minimum: bool = False
    convert: Callable[[Any], Any] | None = None
    defines_outputs: bool = False
    defines_training: bool = False

    @property
    def dest(self) -> str | None:
        """The argparse destination (and descriptor id) the flags give; None if positional."""
        longs = [f for f in self.flags if f.startswith("--")]
        return longs[0][2:].replace("-", "_") if longs else None

    @property
    def flag(self) -> str:
        """The option's main flag, for messages."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    def help_text(self) -> str:
        """Return the help, with the default spelled out where it is no plain value."""
        return f"{self.help} (default: {self.default_text})" if self.default_text else self.help

    def argparse_kwargs(self, default: Any) -> dict[str, Any]:
        """Return the keyword arguments of ``add_argument`` for this option."""
        kwargs: dict[str, Any] = {"help": self.help_text()}
        if self.action:
            kwargs["action"] = self.action
        for key in ("type", "choices", "nargs", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.flags:
            chosen = default if self.cli_default is AS_SETTING else self.cli_default
            kwargs["default"] = copy.deepcopy(chosen)
        return kwargs


def option(default: Any, *flags: str, help: str, **declaration: Any) -> Any:  # noqa: A002
    """Declare a setting: a dataclass field carrying its :class:`Option`.

    Parameters
    ----------
    default : object
        The setting's default (lists and dicts are copied for every instance).
    *flags : str
        Command-line flags; none for a positional argument.
    help : str
        Help text.
    **declaration
        Further :class:`Option` attributes.
    """
    meta = {"option": Option(tuple(flags), help, **declaration)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def derivative_argument(value: str) -> tuple[str, Path]:
    """Parse ``-d NAME=PATH`` (a bare path is named after its folder)."""
    name, sep, path = value.partition("=")
    if not sep:
        path, name = value, Path(value).name
    if not name or not path:
        raise argparse.ArgumentTypeError(
            f"-d {value!r}: give NAME=PATH, e.g. qsmxt=/data/derivatives/qsmxt"
        )
    return name, Path(path)


def mem_gb(value: str) -> float:
    """Parse ``--mem``: a size in GiB, with an optional G, M or T unit (``16G``, ``16000M``)."""
    text = value.strip().upper().removesuffix("B")
    units = {"G": 1.0, "M": 1 / 1024, "T": 1024.0}
    factor = units.get(text[-1:], None)
    number = text[:-1] if factor else text
    try:
        size = float(number) * (factor or 1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--mem {value!r}: use e.g. 16G or 16000M") from exc
    if not math.isfinite(size) or size <= 0:
        raise argparse.ArgumentTypeError(
            f"--mem {value!r}: a positive size is expected, e.g. 16G or 16000M"
        )
    return size


def json_object(value: str) -> dict:
    """Parse ``--plugin-settings``: a JSON object, inline or in a file."""
    try:
        parsed = (
            json.loads(value)
            if value.strip().startswith("{")
            else json.loads(Path(value).read_text())
        )
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a JSON object nor a JSON file"
        ) from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"{value!r} is not a JSON object")
    return parsed
