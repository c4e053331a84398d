"""The argument parser, built from the settings' declarations in one factory.

The entry point, ``scripts/make_descriptor.py`` (the Boutiques descriptor) and the tests all call
:func:`build_parser`; every option comes from :mod:`bids_qnet.config`, where it is declared once.
Two things only the parser knows: ``--config FILE`` (a TOML file whose values become the
parser's defaults, so that the command line overrides them; :mod:`bids_qnet.cli.config_file`)
and ``--output-dir``, the output folder spelled as an option for the command lines Boutiques
builds (see :data:`OUTPUT_DIR_HELP`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bids_qnet import __version__
from bids_qnet.config import declarations, default_of, positionals
from bids_qnet.errors import EXIT_UNKNOWN_LEVEL, EXIT_USAGE

DESCRIPTION = (
    "Q-Net BIDS App: register QSM (Chimap), R2* and T1w to MNI space, crop the basal "
    "ganglia, embed slices with ResNet18 (participant level), then train and "
    "cross-validate ResNet, ResNetSWA and Q-Net (group level)."
)
USAGE = "%(prog)s bids_dir output_dir {participant,group} [options]"
EPILOG = (
    "Options can also come from a TOML file (--config FILE), named as here without the "
    "leading dashes; the command line overrides the file. Exit codes: 0 success, 1 failure, "
    "16 BIDS validation, 17 unknown analysis level, 18 nothing selected, 64 usage, 65 data "
    "error, 66 missing input, 73 cannot create output, 74 I/O error."
)
#: Parser actions that print something and exit, and parser-only spellings: no settings.
PARSER_ONLY = ("help", "version", "bids_exec_spec", "output_dir_option")
OUTPUT_DIR_HELP = (
    "the output folder as an option, for command lines that cannot give it second "
    "(Boutiques' group-level invocations with participant_level_analysis_dir); it must "
    "equal output_dir when both are given"
)


class BIDSAppArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser with BEP027 exit codes, intermixed positionals and ``--config``.

    Exits 64 on a usage error (argparse's 2 is reserved; missing arguments, ``bids_qnet``
    alone, included) and 17 on an analysis level that is not one of the choices.
    Positionals may come after options; ``output_dir`` may instead be given as
    ``--output-dir``. A ``--config`` TOML file fills the defaults before the command line is
    read.
    """

    def error(self, message: str):  # noqa: D102
        self.print_usage(sys.stderr)
        unknown_level = message.startswith("argument analysis_level: invalid choice")
        code = EXIT_UNKNOWN_LEVEL if unknown_level else EXIT_USAGE
        self.exit(code, f"bids_qnet: error: {message}\n")

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        argv = list(sys.argv[1:] if args is None else args)
        self._defaults_from_config(argv)
        positional_action = next(a for a in self._actions if a.dest == "output_dir")
        given = any(word.split("=", 1)[0] == "--output-dir" for word in argv)
        # With --output-dir the positional output folder may be left out (Boutiques' group
        # level); without it, all three positionals are required as usual.
        positional_action.nargs = "?" if given else None
        try:
            parsed = self.parse_intermixed_args(argv, namespace)
        finally:
            positional_action.nargs = None
        option, positional = parsed.output_dir_option, parsed.output_dir
        if positional is None and option is None:
            self.error("the following arguments are required: output_dir")
        if positional is not None and option is not None and Path(positional) != Path(option):
            self.error(f"--output-dir {option} differs from output_dir {positional}")
        parsed.output_dir = positional if positional is not None else option
        return parsed

    def _defaults_from_config(self, argv: list[str]) -> None:
        from bids_qnet.cli.config_file import ConfigFileError, read_config

        probe = argparse.ArgumentParser(add_help=False)
        probe.add_argument("--config", type=Path)
        known, _ = probe.parse_known_args(argv)
        if known.config is None:
            return
        try:
            self.set_defaults(**read_config(known.config, self))
        except ConfigFileError as exc:
            self.print_usage(sys.stderr)
            self.exit(exc.exit_code, f"bids_qnet: error: {exc}\n")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Show an option's default once, as typed: after its help, unless the help states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # Flags and unset options show no default (identity: 1 == True, 0 == False).
        unset = default is None or isinstance(default, bool) or default == argparse.SUPPRESS
        unset = unset or isinstance(action, argparse._CountAction)
        plain = not unset and default not in ([], {})
        if action.option_strings and plain and "(default" not in text:
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
            text += f" (default: {str(shown).replace('%', '%%')})"
        return text


class _PrintDescriptor(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.resources import files

        # One file, descriptor.json at the repository root: a wheel carries it as
        # bids_qnet/data/descriptor.json (pyproject force-include); an editable install reads it
        # from the checkout.
        root = Path(__file__).resolve().parents[2]
        checkout = root / "descriptor.json" if (root / "pyproject.toml").is_file() else None
        for candidate in (files("bids_qnet.data").joinpath("descriptor.json"), checkout):
            if candidate is not None and candidate.is_file():
                sys.stdout.write(candidate.read_text())
                parser.exit(0)
        parser.exit(1, "bids_qnet: the Boutiques descriptor is not packaged in this build\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the bids_qnet argument parser.

    Returns
    -------
    argparse.ArgumentParser
        Positional ``bids_dir output_dir analysis_level``, ``--version``, ``--bids-exec-spec``,
        ``--output-dir`` and one group of options per title of the settings' sections.
    """
    parser = BIDSAppArgumentParser(
        prog="bids_qnet",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=DefaultsHelpFormatter,
    )
    for name, spec in positionals():
        parser.add_argument(name, **spec.argparse_kwargs(None))
    parser.add_argument("--version", action="version", version=f"bids_qnet {__version__}")
    parser.add_argument(
        "--bids-exec-spec",
        action=_PrintDescriptor,
        nargs=0,
        help="print the Boutiques descriptor and exit (BEP027)",
    )
    parser.add_argument(
        "--output-dir", dest="output_dir_option", type=Path, metavar="DIR", help=OUTPUT_DIR_HELP
    )
    groups: dict[str, Any] = {}
    for section, title, name, spec in declarations():
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(*spec.flags, **spec.argparse_kwargs(default_of(section, name)))
    return parser
