"""Statistics of cross-validated predictions: DeLong and clustered AUC tests, the bootstrap.

``delong`` (paired DeLong test, single-AUC CI), ``clustered`` (Obuchowski 1997 for slices
clustered within participants), ``bootstrap`` (participants resampled within class),
``significance`` (Holm, stars), ``compare`` (every model pair at both levels), ``metrics``
(accuracy, sensitivity, specificity, F1, AUC per fold) and ``sidecars`` (what the comparison
tables hold). Pure computation: the files are written by :mod:`bids_qnet.workflows.results`.
"""

from bids_qnet.stats.bootstrap import percentile_ci, stratified_bootstrap_auc
from bids_qnet.stats.clustered import obuchowski_ci, obuchowski_test
from bids_qnet.stats.compare import ModelComparison, compare_models
from bids_qnet.stats.delong import AUCComparison, AUCInterval, delong_ci, delong_test
from bids_qnet.stats.significance import holm, stars

__all__ = [
    "AUCComparison",
    "AUCInterval",
    "ModelComparison",
    "compare_models",
    "delong_ci",
    "delong_test",
    "holm",
    "obuchowski_ci",
    "obuchowski_test",
    "percentile_ci",
    "stars",
    "stratified_bootstrap_auc",
]
