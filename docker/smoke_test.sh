#!/bin/sh
# Smoke test of the bids_qnet image, run as its user: by the Dockerfile's last build step and by
# scripts/build_container.sh in the finished image (read-only root, no network). It is the only
# place that imports bids_qnet's internal modules: update it when they move.
set -eu
echo "user: $(id)"
version=$(cat /version)
test "$(bids_qnet --version)" = "bids_qnet $version"
echo "bids_qnet --version: bids_qnet $version (= /version)"
bids_qnet --bids-exec-spec | python -c '
import json, sys
descriptor = json.load(sys.stdin)
assert descriptor["tool-version"] == sys.argv[1], descriptor["tool-version"]
print("bids_qnet --bids-exec-spec:", descriptor["name"], descriptor["tool-version"],
      descriptor["container-image"]["image"])
' "$version"
echo "bids-validator-deno --version: $(NO_COLOR=1 bids-validator-deno --version 2>/dev/null)"
python - <<'PY'
import os
from pathlib import Path

from bids_qnet.models.embedding import IMAGENET_FILENAME, load_backbone
from bids_qnet.errors import MissingInputError
from bids_qnet.inputs.reference import load_reference

reference = load_reference()
print(f"template: {reference.template_path}")
print(f"atlas: {reference.atlas_path} ({len(reference.labels)} labels)")
weights = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / IMAGENET_FILENAME
if weights.exists():
    print("ImageNet weights:", load_backbone("imagenet", 3, 0)[1])
else:
    try:
        load_backbone("imagenet", 3, 0)
    except MissingInputError as error:
        print(f"no ImageNet weights in this image (built with WEIGHTS=none): {error}")
    else:
        raise SystemExit("imagenet weights loaded although the file is absent")
print("random weights:", load_backbone("random", 3, 0)[1])
PY
echo "smoke test passed"
