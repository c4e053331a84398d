"""Replay the Dockerfile's install steps in a fresh virtual environment, without a Docker engine.

Reads the Dockerfile (the only source of the steps), maps the image's paths to a work folder
(/opt/venv, /opt/torch, /src, /tmp, /version) and runs every RUN step of both stages with the
Dockerfile's ARG and ENV values, then a one-participant demo with the image's entry point.
The run-time steps (the final stage's smoke test and the demo) run as an unprivileged user
with no /etc/passwd entry (``setpriv``, uid 4242) when started as root, so that only the
mapped /tmp and the output folder are writable, as with
``docker run --read-only --tmpfs /tmp -u "$(id -u):$(id -g)"``.

What it cannot replay, and says so in its report: the base image itself (the host interpreter
stands in for it, and its version is compared with the base image tag), ``useradd``, and the
weights download when download.pytorch.org is unreachable. In that case it checks that the
Dockerfile's SHA-256 and URL agree with torchvision's own weights metadata, that a wrong file
is refused by the Dockerfile's ``sha256sum -c`` and by bids_qnet, and loads a stand-in ResNet18
state dict from the mapped TORCH_HOME instead.

    nice -n 10 /usr/bin/python3.11 scripts/replay_docker_install.py --workdir /tmp/qnet_replay

Run it with an interpreter that uid 4242 can execute (not one under /root, such as pyenv's),
else the run-time steps run as the calling user and the report says so. ``--reuse-venv`` keeps
the work folder's environment and replays only ``pip install /src`` and what follows.

Writes ``<workdir>/replay_report.json`` (steps, timings, results) and
``<workdir>/pip_freeze.txt``; exits 1 when a step that should work fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The run-time user: an id absent from /etc/passwd, like a host user passed with ``-u``.
RUN_UID = 4242
SETPRIV = ["setpriv", f"--reuid={RUN_UID}", f"--regid={RUN_UID}", "--clear-groups"]
DEMO = [
    "--registration-profile",
    "fast",
    "--template-resolution",
    "2",
    "--image-size",
    "64",
    "--nprocs",
    "2",
]


# ------------------------------------------------------------------------------ Dockerfile
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
    """Split instructions into the global ARGs and a list of stages."""
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


class PathMap:
    """Map the image's absolute paths to folders under the work folder, in one pass."""

    def __init__(self, work: Path):
        self.targets = {
            "/opt/venv": work / "venv",
            "/opt/torch": work / "torch",
            "/src": work / "src",
            "/tmp": work / "tmp",
            "/version": work / "version",
        }
        alternatives = "|".join(re.escape(k) for k in sorted(self.targets, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=[/\s\"'*.);:]|$)")

    def __call__(self, text: str) -> str:
        """Return ``text`` with the image's paths replaced by the work folder's."""
        return self.pattern.sub(lambda m: str(self.targets[m.group(1)]), text)


def expand(value: str, env: dict[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR}`` from ``env`` (unknown ones are left alone)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), value)


# ------------------------------------------------------------------------------ running
class Replay:
    """Run the steps, time them and keep a report."""

    def __init__(self, work: Path, unprivileged: bool):
        self.work = work
        self.map = PathMap(work)
        self.report: list[dict] = []
        self.unprivileged = unprivileged
        shim = work / "shim"
        shim.mkdir(parents=True, exist_ok=True)
        # "python" before the venv exists is the base image's interpreter: this one.
        for name in ("python", "python3"):
            link = shim / name
            if not link.exists():
                link.symlink_to(sys.executable)
        self.base_env = {
            "PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }

    def run(self, name, command, env, *, as_user=False, expect_fail=False, note="", unsure=False):
        """Run one shell command, record its time and outcome, return its CompletedProcess.

        ``unsure``: a failure is recorded as not verifiable (``ok`` None), not as a failure.
        """
        prefix = SETPRIV if as_user and self.unprivileged else []
        start = time.monotonic()
        done = subprocess.run(
            [*prefix, "bash", "-c", command],
            env=env,
            cwd=env.get("WORKDIR", str(self.work)),
            capture_output=True,
            text=True,
        )
        seconds = round(time.monotonic() - start, 1)
        ok = (done.returncode != 0) if expect_fail else (done.returncode == 0)
        if unsure and not ok:
            ok = None
        entry = {
            "step": name,
            "command": command,
            "seconds": seconds,
            "exit_code": done.returncode,
            "as_user": RUN_UID if (as_user and self.unprivileged) else os.getuid(),
            "expected": "failure" if expect_fail else "success",
            "ok": ok,
            "note": note,
            "output_tail": (done.stdout + done.stderr)[-1500:],
        }
        self.report.append(entry)
        flag = {True: "ok  ", False: "FAIL", None: "n/a "}[ok]
        print(f"[{flag}] {seconds:7.1f} s  {name}  (exit {done.returncode}) {note}", flush=True)
        if ok is not True:
            print(entry["output_tail"], flush=True)
        return done


def dockerignore_patterns(path: Path) -> list[str]:
    """Return the patterns of a .dockerignore file (comments and blank lines dropped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(relative: str, patterns: list[str]) -> bool:
    """Tell whether a path relative to the build context is left out, as Docker reads it.

    A pattern matches from the context root; one that starts with ``**/`` at any depth.
    """
    for pattern in patterns:
        if pattern.startswith("**/"):
            if fnmatch.fnmatch(Path(relative).name, pattern[3:]):
                return True
        elif fnmatch.fnmatch(relative, pattern):
            return True
    return False


def copy_context(dest: Path) -> None:
    """Copy the checkout as ``COPY . /src`` sees it: without what .dockerignore lists."""
    patterns = dockerignore_patterns(ROOT / ".dockerignore")

    def ignore(folder, names):
        base = Path(folder).relative_to(ROOT)
        return {n for n in names if is_ignored((base / n).as_posix(), patterns)}

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT, dest, ignore=ignore)


def replay(work: Path, reuse_venv: bool = False) -> int:
    """Replay both stages, the weights check and the demo; return the exit status."""
    reuse = reuse_venv and (work / "venv" / "bin" / "python").is_file()
    if work.exists():
        for child in work.iterdir():
            if not (reuse and child.name == "venv"):
                shutil.rmtree(
                    child
                ) if child.is_dir() and not child.is_symlink() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    unprivileged = os.getuid() == 0 and shutil.which("setpriv") is not None
    rp = Replay(work, unprivileged)
    global_args, (build, final) = stages(instructions(ROOT / "Dockerfile"))
    base = global_args.get("BASE_IMAGE", "")
    wanted = re.search(r"python:(\d+\.\d+\.\d+)", base)
    host = platform.python_version()
    summary = {
        "base_image": base,
        "host_python": f"{host} ({sys.executable})",
        "base_python_matches": bool(wanted and wanted.group(1) == host),
        "not_replayed": [
            f"FROM {base}: the host interpreter stands in for the base image",
            f"useradd (the run-time steps run as uid {RUN_UID} instead)"
            if unprivileged
            else "useradd, and the unprivileged user (not started as root)",
        ],
    }
    (work / "tmp").mkdir()
    (work / "tmp").chmod(0o1777)
    weights_step = None

    # ---- build stage
    env = dict(rp.base_env)
    args = dict(global_args)
    for keyword, rest in build[1:]:
        if keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value or args.get(name, "")
        elif keyword == "ENV":
            for key, value in env_pairs(rest).items():
                env[key] = expand(rp.map(value), env)
        elif keyword == "COPY":
            source, target = rest.split()
            if source != "." or target != "/src":
                raise SystemExit(f"replay knows only COPY . /src, not COPY {rest}")
            start = time.monotonic()
            copy_context(rp.map.targets["/src"])
            print(f"[ok  ] {time.monotonic() - start:7.1f} s  COPY . /src (.dockerignore applied)")
        elif keyword == "RUN":
            command = rp.map(expand(rest, {**args}))
            if "download.pytorch.org" in rest:
                weights_step = (rest, command)
                done = rp.run("weights download", command, {**env, **args}, unsure=True)
                summary["weights_downloaded"] = done.returncode == 0
                if done.returncode != 0:
                    rp.report[-1]["note"] = "download.pytorch.org unreachable: not verified"
            elif reuse and "/src" not in rest:
                print(f"[skip]         {rest[:70]}  (--reuse-venv)")
                summary.setdefault("reused", []).append(rest)
            else:
                rp.run(rest[:70], command, {**env, **args})

    venv_python = str(rp.map.targets["/opt/venv"] / "bin" / "python")
    if rp.unprivileged:
        if subprocess.run([*SETPRIV, venv_python, "-c", "pass"], check=False).returncode != 0:
            rp.unprivileged = False
            summary["not_replayed"][1] = (
                f"useradd and the unprivileged user: uid {RUN_UID} cannot run {sys.executable} "
                "(use an interpreter outside /root, e.g. /usr/bin/python3.11)"
            )
    freeze = subprocess.run(
        [venv_python, "-m", "pip", "freeze"], capture_output=True, text=True, check=False
    ).stdout
    (work / "pip_freeze.txt").write_text(freeze)

    # ---- final stage: ENV, ARG, then the RUN steps split at "&&", as the run-time user
    run_env = dict(rp.base_env)
    args = dict(global_args)
    for keyword, rest in final[1:]:
        if keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value or args.get(name, "")
        elif keyword == "ENV":
            for key, value in env_pairs(rest).items():
                run_env[key] = expand(rp.map(value), run_env)
        elif keyword == "ENTRYPOINT":
            summary["entrypoint"] = json.loads(rest)
    run_env["WORKDIR"] = str(rp.map.targets["/tmp"])
    stage_env = {**run_env, **args}
    (work / "version").touch()
    (work / "version").chmod(0o666)
    for keyword, rest in final[1:]:
        if keyword != "RUN":
            continue
        for part in (p.strip() for p in rest.split("&&")):
            if part.startswith("useradd"):
                continue
            unsure = "load_backbone('imagenet'" in part and not summary.get("weights_downloaded")
            note = "real weights not available: stand-in checked below" if unsure else ""
            rp.run(part[:70], rp.map(part), stage_env, as_user=True, note=note, unsure=unsure)

    # ---- the wheel carries descriptor.json: --bids-exec-spec prints the root file
    spec = rp.run(
        "bids_qnet --bids-exec-spec equals descriptor.json",
        "bids_qnet --bids-exec-spec",
        stage_env,
        as_user=True,
    )
    same = spec.returncode == 0 and spec.stdout == (ROOT / "descriptor.json").read_text()
    rp.report[-1]["ok"] = same
    summary["wheel_descriptor_equals_root"] = same

    # ---- weights: what can be checked without download.pytorch.org
    if weights_step and not summary.get("weights_downloaded"):
        summary["weights"] = check_weights_offline(rp, weights_step, stage_env, venv_python)

    # ---- the demo participant through the entry point
    summary["demo"] = demo(rp, stage_env, summary.get("entrypoint", ["bids_qnet"]), venv_python)

    failed = [s["step"] for s in rp.report if s["ok"] is False]
    summary["failed_steps"] = failed
    summary["total_seconds"] = round(sum(s["seconds"] for s in rp.report), 1)
    (work / "replay_report.json").write_text(
        json.dumps({"summary": summary, "steps": rp.report}, indent=2) + "\n"
    )
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


def check_weights_offline(rp: Replay, step, env, venv_python) -> dict:
    """Check the Dockerfile's weights step against torchvision, and its checks on a stand-in."""
    original, _ = step
    url = re.search(r"https://\S+\.pth", original).group(0)
    sha = re.search(r"\b[0-9a-f]{64}\b", original).group(0)
    target = rp.map(re.search(r"/opt/torch/\S+\.pth", original).group(0))
    probe = (
        "import json, sys, torchvision; from bids_qnet.embed import IMAGENET_FILENAME; "
        "print(json.dumps({'url': torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, "
        "'bids_qnet_name': IMAGENET_FILENAME}))"
    )
    meta = json.loads(
        subprocess.run(
            [venv_python, "-c", probe], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    name = url.rsplit("/", 1)[1]
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", name).group(1)
    result = {
        "dockerfile_url": url,
        "dockerfile_sha256": sha,
        "url_equals_torchvision_IMAGENET1K_V1": url == meta["url"],
        "name_equals_bids_qnet_IMAGENET_FILENAME": name == meta["bids_qnet_name"],
        "sha256_starts_with_name_prefix": sha.startswith(prefix),
        "not_verified": "that download.pytorch.org serves a file with this SHA-256, and loading "
        "the real ImageNet weights (host unreachable from this machine)",
    }
    # A stand-in: a ResNet18 state dict (random initialisation) at the path the image uses.
    standin = rp.work / "standin-resnet18.pth"
    make = (
        "import sys, torch, torchvision; torch.manual_seed(0); "
        "torch.save(torchvision.models.resnet18().state_dict(), sys.argv[1])"
    )
    subprocess.run([venv_python, "-c", make, str(standin)], check=True, env=env)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(standin, target)
    check = re.search(r"echo \"[0-9a-f]{64}  \S+\"\s*\|\s*sha256sum -c -", original).group(0)
    rp.run(
        "Dockerfile sha256sum -c on a wrong file",
        rp.map(check),
        env,
        expect_fail=True,
        note="the build would stop",
    )
    refuse = (
        "python -c \"from bids_qnet.embed import load_backbone; load_backbone('imagenet', 3, 0)\""
    )
    rp.run(
        "bids_qnet refuses a wrong resnet18-f37072fd.pth",
        refuse,
        env,
        as_user=True,
        expect_fail=True,
        note="SHA-256 prefix check",
    )
    Path(target).unlink()
    digest = subprocess.run(
        ["sha256sum", str(standin)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    named = Path(target).parent / f"resnet18-{digest[:8]}.pth"
    shutil.copy(standin, named)
    load = (
        'python -c "import sys; from bids_qnet.embed import load_backbone; '
        f"print(load_backbone('{named}', 3, 0)[1])\""
    )
    done = rp.run("load a stand-in state dict from TORCH_HOME", load, env, as_user=True)
    result["standin_file"] = str(named)
    result["standin_loaded"] = done.returncode == 0
    return result


def demo(rp: Replay, env, entrypoint, venv_python) -> dict:
    """Write a one-participant demo dataset and run the participant level on it."""
    data = rp.work / "data"
    bids, out = data / "bids", data / "out"
    rp.run(
        "bids_qnet-demo (1 participant, 2 mm)",
        f"bids_qnet-demo {bids} --participants 1 --resolution 2 --seed 3",
        env,
    )
    out.mkdir(parents=True)
    if rp.unprivileged:
        os.chown(out, RUN_UID, RUN_UID)
    standin = sorted((rp.map.targets["/opt/torch"] / "hub" / "checkpoints").glob("resnet18-*.pth"))
    weights = str(standin[0]) if standin else "imagenet"
    command = " ".join(
        [*entrypoint, str(bids), str(out), "participant", "--embedding-weights", weights, *DEMO]
    )
    done = rp.run("participant level, 1 demo participant", command, env, as_user=True)
    check = (
        "import json, sys; from pathlib import Path\n"
        "from bids_qnet.derivatives import is_complete\n"
        "anat = Path(sys.argv[1]) / 'sub-01' / 'anat'\n"
        "data = [p for p in anat.iterdir() if not p.name.endswith('.json')]\n"
        "print(json.dumps({'files': len(data), 'incomplete': "
        "[p.name for p in data if not is_complete(p)]}))"
    )
    state = subprocess.run(
        [venv_python, "-c", check, str(out)], capture_output=True, text=True, env=env
    )
    files = json.loads(state.stdout) if state.returncode == 0 else {"error": state.stderr[-500:]}
    return {
        "exit_code": done.returncode,
        "weights": weights,
        "report": (out / "sub-01.html").is_file(),
        **files,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options and replay."""
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--workdir", type=Path, default=Path("/tmp/qnet_replay"))
    cli.add_argument(
        "--reuse-venv", action="store_true", help="keep <workdir>/venv from an earlier replay"
    )
    args = cli.parse_args(argv)
    return replay(args.workdir.absolute(), args.reuse_venv)


if __name__ == "__main__":
    sys.exit(main())
