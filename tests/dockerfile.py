"""Read a Dockerfile and a .dockerignore the way the tests need (no Docker engine involved)."""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages(steps: list[tuple[str, str]]) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Split instructions into the global ARGs and a list of stages (each starts with FROM)."""
    global_args, found = {}, []
    for keyword, rest in steps:
        if keyword == "FROM":
            found.append([(keyword, rest)])
        elif not found and keyword == "ARG":
            name, _, value = rest.partition("=")
            global_args[name] = value
        elif found:
            found[-1].append((keyword, rest))
    return global_args, found


def env_pairs(text: str) -> dict[str, str]:
    """Parse ``ENV A=1 B=two`` (shell-like quoting)."""
    return dict(item.split("=", 1) for item in shlex.split(text))


def dockerignore_patterns(path: Path) -> list[str]:
    """Return the patterns of a .dockerignore file (comments and blank lines dropped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """Tell whether a path relative to the build context is left out, as Docker reads it.

    A pattern matches from the context root; one that starts with ``**/`` at any depth; a
    folder that matches leaves out everything below it. Exceptions (``!``) are not supported.
    """
    assert not any(p.startswith("!") for p in patterns), "exceptions are not supported"
    parts = Path(relative).parts
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            return True
    return False
