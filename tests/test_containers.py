"""Dockerfile, Singularity.def, .dockerignore, descriptor.json and the package agree.

The image itself cannot be built on a machine without a Docker engine: these tests read the
files; scripts/replay_docker_install.py replays the Dockerfile's install steps for real.
"""

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import torchvision
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bids_qnet import __version__
from bids_qnet.derivatives import dataset_description
from bids_qnet.embed import IMAGENET_FILENAME

ROOT = Path(__file__).resolve().parents[1]
IMAGE = f"bidsqnet/bids_qnet:{__version__}"


def _load_replay():
    spec = importlib.util.spec_from_file_location(
        "replay_docker_install", ROOT / "scripts" / "replay_docker_install.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


replay = _load_replay()


@pytest.fixture(scope="module")
def dockerfile():
    global_args, (build, final) = replay.stages(replay.instructions(ROOT / "Dockerfile"))
    return {"args": global_args, "build": build, "final": final}


def _all(stage, keyword):
    return [rest for kw, rest in stage if kw == keyword]


def _env(stage):
    env = {}
    for rest in _all(stage, "ENV"):
        env.update(replay.env_pairs(rest))
    return env


def _args(stage):
    return dict(rest.partition("=")[::2] for rest in _all(stage, "ARG"))


@pytest.fixture(scope="module")
def singularity():
    text = (ROOT / "Singularity.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)\s*$", text, flags=re.M))
    sections, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            current = match.group(1)
            sections[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            sections[current].append(line.strip())
    return {"header": header, "sections": sections, "text": text}


def _singularity_env(sections):
    pairs = (line.removeprefix("export ").split("=", 1) for line in sections["environment"])
    return dict(pairs)


def test_one_image_name_and_version_everywhere(dockerfile, singularity):
    descriptor = json.loads((ROOT / "descriptor.json").read_text())
    assert _args(dockerfile["final"])["BIDS_QNET_VERSION"] == __version__
    assert f"docker build -t {IMAGE} ." in (ROOT / "Dockerfile").read_text()
    assert singularity["header"] == {"Bootstrap": "docker", "From": IMAGE}
    assert f"org.opencontainers.image.version {__version__}" in singularity["sections"]["labels"]
    assert descriptor["container-image"]["image"] == IMAGE
    generated_by = dataset_description([])["GeneratedBy"][0]
    assert generated_by["Container"]["Tag"] == IMAGE


def test_labels_take_the_version_argument(dockerfile):
    labels = " ".join(_all(dockerfile["final"], "LABEL"))
    assert 'org.opencontainers.image.version="${BIDS_QNET_VERSION}"' in labels
    runs = " ".join(_all(dockerfile["final"], "RUN"))
    # The build stops unless the installed package has the version of the label.
    assert "> /version" in runs and 'test "$(cat /version)" = "${BIDS_QNET_VERSION}"' in runs


def test_entrypoint_runscript_and_console_script_agree(dockerfile, singularity):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bids_qnet"] == "bids_qnet.cli.run:console_main"
    assert [json.loads(e) for e in _all(dockerfile["final"], "ENTRYPOINT")] == [["bids_qnet"]]
    assert singularity["sections"]["runscript"] == ['exec bids_qnet "$@"']
    assert "bids_qnet --version" in singularity["sections"]["test"]


def test_environment_is_the_same_and_writable_places_are_in_tmp(dockerfile, singularity):
    docker_env = _env(dockerfile["final"])
    apptainer_env = _singularity_env(singularity["sections"])
    # Apptainer replaces HOME with its own; everything else is the same.
    assert {k: v for k, v in docker_env.items() if k != "HOME"} == apptainer_env
    assert docker_env["HOME"] == "/tmp"
    for name in ("TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR"):
        assert docker_env[name] == "/tmp" or docker_env[name].startswith("/tmp/"), name
    assert docker_env["PATH"].startswith("/opt/venv/bin:")


def test_runs_as_a_non_root_user(dockerfile):
    users = _all(dockerfile["final"], "USER")
    assert users and users[-1] not in ("root", "0")
    assert any(
        "useradd --uid 1000 --user-group" in r and users[-1] in r
        for r in _all(dockerfile["final"], "RUN")
    )
    assert _all(dockerfile["build"], "USER") == []


def test_base_image_is_pinned_and_satisfies_requires_python(dockerfile):
    base = dockerfile["args"]["BASE_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert match, f"BASE_IMAGE {base} is not pinned to a patch release"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(".".join(match.groups()[:3]))
    froms = [
        rest
        for stage in (dockerfile["build"], dockerfile["final"])
        for kw, rest in stage
        if kw == "FROM"
    ]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]


def _pins(dockerfile) -> dict[str, str]:
    pins, others = {}, []
    for run in _all(dockerfile["build"], "RUN"):
        if not run.startswith("pip install"):
            continue
        for word in run.split()[2:]:
            if "==" in word:
                name, version = word.split("==")
                pins[canonicalize_name(name)] = version
            else:
                others.append(word)
    assert others == ["/src"], f"unpinned pip install arguments: {others}"
    return pins


def test_dockerfile_pins_every_dependency_within_its_constraint(dockerfile):
    pins = _pins(dockerfile)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in dependencies:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} from pyproject.toml is not pinned in the Dockerfile"
        )
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {text}"
    assert {"torch", "torchvision"} <= set(pins)


def test_weights_are_torchvisions_and_checked_with_their_full_sha256(dockerfile):
    (step,) = [r for r in _all(dockerfile["build"], "RUN") if "download.pytorch.org" in r]
    url = re.search(r"https://\S+\.pth", step).group(0)
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert url.rsplit("/", 1)[1] == IMAGENET_FILENAME
    (sha,) = re.findall(r"\b[0-9a-f]{64}\b", step)
    assert sha.startswith(re.search(r"-([0-9a-f]{8})\.pth$", IMAGENET_FILENAME).group(1))
    torch_home = _env(dockerfile["final"])["TORCH_HOME"]
    target = f"{torch_home}/hub/checkpoints/{IMAGENET_FILENAME}"
    assert f'echo "{sha}  {target}"' in step and "sha256sum -c -" in step
    copies = _all(dockerfile["final"], "COPY")
    assert f"--from=build {torch_home} {torch_home}" in copies


def test_dockerignore_keeps_the_package_and_drops_the_rest():
    patterns = replay.dockerignore_patterns(ROOT / ".dockerignore")
    for kept in (
        "pyproject.toml",
        "README.md",
        "descriptor.json",
        "bids_qnet/cli/run.py",
        "bids_qnet/demo/cli.py",
        "bids_qnet/data/resources.json",
    ):
        assert not replay.is_ignored(kept, patterns), kept
    for dropped in (".venv", ".git", "demo", "tests", "model.sif", "bids_qnet/__pycache__"):
        assert replay.is_ignored(dropped, patterns), dropped


def test_path_map_replaces_each_image_path_once(tmp_path):
    mapping = replay.PathMap(tmp_path)
    text = "python -m venv /opt/venv && rm -rf /tmp/* && cat /version) PATH=/opt/venv/bin:$PATH"
    mapped = mapping(text)
    assert mapped == (
        f"python -m venv {tmp_path}/venv && rm -rf {tmp_path}/tmp/* && cat {tmp_path}/version) "
        f"PATH={tmp_path}/venv/bin:$PATH"
    )
    assert mapping("/srcfoo /opt/venvx /tmpdir") == "/srcfoo /opt/venvx /tmpdir"
