"""A synthetic BIDS dataset: QSM, R2* and T1w of controls (HC) and haemochromatosis patients (HH).

A phantom is built once in template space (`phantom`); each participant gets regional values
(age, variability, more iron in the planted regions of patients; `cohort`), and each scan a random
pose, a smooth warp, an oblique anisotropic GRE grid (QSM, R2*), a T1w grid and noise
(`acquisition`). `dataset` writes the BIDS files (`bids_files`) and keeps the ground truth outside;
`cli` is the ``bids_qnet-demo`` command.
"""

from bids_qnet.demo.cli import build_parser, main
from bids_qnet.demo.dataset import DemoInfo, make_demo_dataset

__all__ = ["DemoInfo", "build_parser", "main", "make_demo_dataset"]
