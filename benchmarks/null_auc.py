"""How far from 0.5 a cross-validated AUC lands when there is nothing to learn.

The science benchmark's permuted-label row is one draw. This benchmark gives the distribution
that draw comes from, for the built-in ROI baseline (:class:`bids_qnet.models.roi.RegionalLogistic`,
L2, penalty by inner CV) under the group level's scheme: stratified 5-fold cross-validation,
out-of-fold scores pooled into one ROC AUC. Features are Gaussian noise (the regional means of a
cohort with no group difference); labels half and half. It prints the mean and SD of the null
AUC and the share of draws outside 0.5 ± 0.1, and, with ``--effect``, the same with a real
offset of that many SDs in two of the features (the power side).

Usage::

    python benchmarks/null_auc.py --participants 80 --features 12 --draws 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import load_average, report_header, write_result
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from bids_qnet.models.roi import RegionalLogistic


def pooled_auc(features: np.ndarray, labels: np.ndarray, seed: int, folds: int) -> float:
    """Cross-validate the ROI model; return the AUC of the pooled out-of-fold scores."""
    scores = np.zeros(len(labels))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(features, labels):
        model = RegionalLogistic(seed=seed).fit(features[train], labels[train], 2)
        logits = model.logits(features[test])
        scores[test] = logits[:, 1] - logits[:, 0]
    return float(roc_auc_score(labels, scores))


def main() -> None:
    """Run the draws and write ``results/null_auc.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=80)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--effect", type=float, default=0.0, help="SDs added to two features")
    args = parser.parse_args()
    load_before = load_average()
    rng = np.random.default_rng(0)
    start, aucs = time.perf_counter(), []
    for draw in range(args.draws):
        labels = np.arange(args.participants) % 2
        rng.shuffle(labels)
        features = rng.normal(size=(args.participants, args.features))
        features[:, :2] += args.effect * labels[:, None]
        aucs.append(pooled_auc(features, labels, draw, args.folds))
    aucs = np.asarray(aucs)
    header = report_header("null_auc", vars(args), load_before)
    summary = {
        "mean": round(float(aucs.mean()), 3),
        "sd": round(float(aucs.std(ddof=1)), 3),
        "outside_0.4_0.6": round(float(((aucs < 0.4) | (aucs > 0.6)).mean()), 3),
        "percentiles_2.5_97.5": [round(float(q), 3) for q in np.percentile(aucs, [2.5, 97.5])],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(
        f"{args.participants} participants, {args.features} features, effect {args.effect} SD, "
        f"{args.draws} draws: AUC mean {summary['mean']}, SD {summary['sd']}, "
        f"95 % of draws in {summary['percentiles_2.5_97.5']}, "
        f"outside 0.5 ± 0.1: {summary['outside_0.4_0.6']:.0%}"
    )
    suffix = "" if args.effect == 0 else f"_effect{args.effect:g}"
    write_result(f"null_auc{suffix}", header | {"summary": summary, "aucs": aucs.round(4).tolist()})


if __name__ == "__main__":
    main()
