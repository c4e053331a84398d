# bids_qnet developer commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
PARTICIPANTS ?= 8
WEIGHTS ?= random
PROFILE ?= fast
NPROCS ?= 2

.PHONY: venv demo test lint weights clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Quick CPU configuration of the group level for the demo (the CLI defaults are the paper's:
# 10 folds, 100 + 50 epochs, 224 px, meant for a GPU).
GROUP_QUICK ?= --folds 4 --epochs 3 --qnet-epochs 20 --image-size 96 --batch-size 32 --ig-steps 8

# The main job on the built-in synthetic demo dataset: participant level, then group level.
demo: venv
	$(BIN)/bids_qnet-demo $(DEMO)/bids --participants $(PARTICIPANTS) --overwrite
	$(BIN)/bids_qnet $(DEMO)/bids $(DEMO)/derivatives participant \
		--registration-profile $(PROFILE) --embedding-weights $(WEIGHTS) \
		--nprocs $(NPROCS) --omp-nthreads 1 -w $(DEMO)/work
	$(BIN)/bids_qnet $(DEMO)/bids $(DEMO)/derivatives group \
		--embedding-weights $(WEIGHTS) $(GROUP_QUICK)
	@echo "Reports: $(DEMO)/derivatives/group.html and $(DEMO)/derivatives/sub-*.html"

test: venv
	$(BIN)/python -m pytest tests

lint: venv
	$(BIN)/ruff check bids_qnet tests benchmarks
	$(BIN)/ruff format --check bids_qnet tests benchmarks

# Fetch torchvision's ResNet18 ImageNet weights into TORCH_HOME (needs internet, once).
weights: venv
	$(BIN)/python -c "import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')"

clean-demo:
	rm -rf $(DEMO)
