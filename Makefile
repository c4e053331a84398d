# bids_qnet developer commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
PARTICIPANTS ?= 8
WEIGHTS ?= random
PROFILE ?= fast
NPROCS ?= 2

# Exact versions of everything installed (also used by the Dockerfile): `make constraints`.
CONSTRAINTS := requirements/constraints.txt

.PHONY: venv demo test test-fast lint weights clean-demo constraints container

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	# PyPI's torch pulls ~3 GB of CUDA wheels: resume interrupted downloads, retry the whole install.
	for attempt in 1 2 3; do \
	  $(BIN)/python -m pip install --quiet --retries 10 --resume-retries 50 \
	    -c $(CONSTRAINTS) -e '.[test]' && break; \
	  if [ $$attempt = 3 ]; then exit 1; fi; \
	  echo "pip install failed (attempt $$attempt of 3), retrying in 20 s"; sleep 20; \
	done
	touch $@

# Regenerate $(CONSTRAINTS) from a fresh environment (UPGRADE=1: newest versions allowed).
constraints:
	PYTHON=$(PYTHON) UPGRADE=$(UPGRADE) scripts/update_constraints.sh

# Build the Docker image with buildah and run it (docs/containers.md): `make container
# CONTAINER_ARGS="--base local --weights none"`.
container:
	scripts/build_container.sh $(CONTAINER_ARGS)

# Group level of the demo: the default (quantitative) preset runs in a few minutes on a CPU;
# 4 folds for 8 participants. The paper's pipeline, quick on a CPU:
# make demo GROUP_QUICK="--preset paper --folds 4 --epochs 3 --qnet-epochs 20 --image-size 96"
# One Integrated Gradients pass of 50 steps (--ig-max-steps 50): at 224 px on a CPU the second
# and third passes of an unconverged map take minutes per participant (measured: 1-4 min).
GROUP_QUICK ?= --folds 4 --ig-max-steps 50

# The main job on the built-in synthetic demo dataset: participant level, then group level.
demo: venv
	$(BIN)/bids_qnet-demo $(DEMO)/bids --participants $(PARTICIPANTS) --overwrite
	$(BIN)/bids_qnet $(DEMO)/bids $(DEMO)/derivatives participant \
		--registration-profile $(PROFILE) --embedding-weights $(WEIGHTS) \
		--nprocs $(NPROCS) --omp-nthreads 1 -w $(DEMO)/work
	$(BIN)/bids_qnet $(DEMO)/bids $(DEMO)/derivatives group \
		--embedding-weights $(WEIGHTS) $(GROUP_QUICK)
	@echo "Reports: $(DEMO)/derivatives/group.html and $(DEMO)/derivatives/sub-*.html"

# Every test, the slow end-to-end runs included (what CI runs; about 10-20 minutes on 2 cores).
test: venv
	$(BIN)/python -m pytest tests

# The fast lane for iterating: everything but the tests marked slow (a minute or two).
test-fast: venv
	$(BIN)/python -m pytest tests -m "not slow"

lint: venv
	$(BIN)/ruff check bids_qnet tests benchmarks
	$(BIN)/ruff format --check bids_qnet tests benchmarks

# Fetch torchvision's ResNet18 ImageNet weights into TORCH_HOME (needs internet, once).
weights: venv
	$(BIN)/python -c "import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')"

clean-demo:
	rm -rf $(DEMO)
