"""A participant-level run the way a locked-down cluster or container runs it: read-only input,
no network, an empty home and working directory. It succeeds, writes only into its output and
work folders, and records the seed and library versions. Read-only outputs give exit 73.

As root, ``chmod`` does not stop writes; the commands here then run without the capabilities
that bypass file permissions (see ``robustness.permissions_bind``), or the tests are skipped.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bids_qnet.errors import EXIT_CANT_CREATE, EXIT_SUCCESS
from bids_qnet.outputs.derivatives import is_complete
from bids_qnet.outputs.provenance import DISTRIBUTIONS

from .robustness import (
    GROUP_QUICK,
    STEM,
    cli,
    command,
    environment,
    group_cohort,
    make_writable,
    participant_args,
    permissions_bind,
    tiny_bids,
    tiny_profile,
)

# Loaded by every Python process of the run (nipype workers too): any attempt to resolve a
# name or open an internet socket is logged, then refused.
SITECUSTOMIZE = """
import os
import socket
import sys

_LOG = os.environ["BIDS_QNET_TEST_NETWORK_LOG"]
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}


def _refuse_network(event, args):
    internet = event in ("socket.connect", "socket.sendto") and getattr(
        args[0], "family", None
    ) in (socket.AF_INET, socket.AF_INET6)
    if internet or event in _LOOKUPS:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {sys.argv[:2]} {event} {args[1:]!r}\\n")
        raise OSError(f"network access blocked by the test ({event})")


sys.addaudithook(_refuse_network)
"""


def _tree(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``folder`` with its size, modification time and mode."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_mode)
        for p in folder.rglob("*")
    }


def _network_sandbox(root: Path) -> tuple[dict[str, str], Path]:
    hook = root / "sitecustomize"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    log = root / "network.log"
    log.touch()
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "BIDS_QNET_TEST_NETWORK_LOG": str(log)}, log


def _no_network_namespace() -> list[str]:
    """``unshare --net`` where it works (no interface but a down loopback, for every program,
    the BIDS validator included); the audit hook covers Python everywhere else."""
    try:
        probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    except FileNotFoundError:
        return []
    return ["unshare", "--net"] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    preexec = permissions_bind()
    root = tmp_path_factory.mktemp("sandboxed")
    bids = tiny_bids(root / "data" / "bids")
    profile = tiny_profile(root)
    home, cwd, tmp = root / "home", root / "cwd", root / "tmp"
    for folder in (home, cwd, tmp):
        folder.mkdir()
    network_env, network_log = _network_sandbox(root)
    env = environment(HOME=str(home), TMPDIR=str(tmp), **network_env)
    for path in [bids, *bids.rglob("*")]:  # chmod -R a-w
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    data = root / "data"
    before = {"data": _tree(data), "home": _tree(home), "cwd": _tree(cwd)}
    out, work = data / "out", data / "work"
    args = participant_args(bids, out, work, profile)  # with BIDS validation
    prefix = _no_network_namespace()
    result = subprocess.run(
        [*prefix, *command(args)],
        env=env,
        cwd=cwd,
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    after = {"data": _tree(data), "home": _tree(home), "cwd": _tree(cwd)}
    yield {
        "result": result,
        "bids": bids,
        "out": out,
        "before": before,
        "after": after,
        "env": env,
        "network_log": network_log,
        "preexec": preexec,
    }
    make_writable(bids)


@pytest.mark.slow
def test_read_only_input_works(sandboxed):
    result = sandboxed["result"]
    assert result.returncode == EXIT_SUCCESS, result.stderr[-3000:]
    assert is_complete(sandboxed["out"] / "sub-01" / "anat" / f"{STEM}_embeddings.npy")
    probe = subprocess.run(  # the input really was read-only for the run
        [sys.executable, "-c", f"open({str(sandboxed['bids'] / 'x')!r}, 'w')"],
        preexec_fn=sandboxed["preexec"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr


@pytest.mark.slow
def test_nothing_written_outside_output_and_work(sandboxed):
    before, after = sandboxed["before"], sandboxed["after"]
    assert after["home"] == before["home"] == {}
    assert after["cwd"] == before["cwd"] == {}
    names = set(before["data"]) | set(after["data"])
    changed = {
        name.split(os.sep)[0]
        for name in names
        if before["data"].get(name) != after["data"].get(name)
    }
    assert changed <= {"out", "work"}, changed
    assert {n: v for n, v in after["data"].items() if n.startswith("bids")} == before["data"]


@pytest.mark.slow
def test_no_network_access(sandboxed):
    assert sandboxed["result"].returncode == EXIT_SUCCESS
    assert sandboxed["network_log"].read_text() == ""
    # The guard works: the same environment refuses a name lookup and a connection (logged).
    for code in (
        "import socket; socket.getaddrinfo('example.org', 80)",
        "import socket; socket.socket().connect(('192.0.2.1', 80))",
    ):
        probe = subprocess.run(
            [sys.executable, "-c", code],
            env=sandboxed["env"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0 and "network access blocked by the test" in probe.stderr
    attempts = sandboxed["network_log"].read_text()
    assert "socket.getaddrinfo" in attempts and "socket.connect" in attempts
    sandboxed["network_log"].write_text("")


@pytest.mark.slow
def test_seed_and_versions_recorded(sandboxed):
    out = sandboxed["out"]
    sidecar = json.loads((out / "sub-01" / "anat" / f"{STEM}_embeddings.json").read_text())
    recorded = sidecar["bids_qnet"]
    assert recorded["RandomSeed"] == 7
    software = recorded["Software"]
    assert set(software) == {"python", "bids_qnet", *DISTRIBUTIONS}
    assert software["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "torchvision", "antspyx", "nibabel", "numpy", "pybids", "nipype"):
        assert software[name][0].isdigit(), (name, software[name])
    saved = json.loads(next(out.glob("sub-01/log/*/bids_qnet_settings.json")).read_text())
    assert saved["random_seed"] == 7 and saved["software"] == software


# --- outputs that cannot be written ---------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path):
    preexec = permissions_bind()
    locked = tmp_path / "locked"
    locked.mkdir()
    yield {"locked": locked, "preexec": preexec, "tmp": tmp_path}
    make_writable(tmp_path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("unwritable_inputs")
    return {"bids": tiny_bids(root / "bids"), "profile": tiny_profile(root)}


def _error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("bids_qnet: error")]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("output", "is not writable: choose another output_dir"),
        ("inside", "cannot create output folder"),
        ("work", "cannot create work folder"),
    ],
)
def test_read_only_output_exits_73(small, unwritable, where, message):
    locked, tmp = unwritable["locked"], unwritable["tmp"]
    out = {"output": locked, "inside": locked / "out"}.get(where, tmp / "out")
    work = locked / "work" if where == "work" else tmp / "work"
    locked.chmod(0o555)
    args = participant_args(small["bids"], out, work, small["profile"], "--skip-bids-validation")
    result = cli(args, preexec_fn=unwritable["preexec"])
    assert result.returncode == EXIT_CANT_CREATE, result.stderr[-3000:]
    lines = _error_lines(result)
    assert len(lines) == 1 and message in lines[0], lines
    assert str(locked) in lines[0]
    assert list(locked.iterdir()) == []


def test_read_only_output_at_the_group_level(unwritable):
    bids, out = group_cohort(unwritable["tmp"] / "cohort")
    for folder in [out, *out.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o555)
    result = cli([str(bids), str(out), "group", *GROUP_QUICK], preexec_fn=unwritable["preexec"])
    assert result.returncode == EXIT_CANT_CREATE, result.stderr[-3000:]
    lines = _error_lines(result)
    assert len(lines) == 1 and f"cannot write {out / 'logs'}" in lines[0], lines
