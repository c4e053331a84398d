"""JSON sidecars of the model comparison tables: what each column holds and how it was made.

Pure content: :mod:`bids_qnet.workflows.results` writes the tables
(``desc-delong_comparisons.tsv``, ``desc-bootstrap_aucs.tsv``, ``desc-bootstrap_ci.tsv``) with
these sidecars beside them.
"""

from __future__ import annotations

from bids_qnet.stats.compare import METHODS, ModelComparison
from bids_qnet.stats.significance import STAR_LEVELS

REFERENCES = [
    "DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more "
    "correlated receiver operating characteristic curves: a nonparametric approach. "
    "Biometrics 44:837-845.",
    "Sun X, Xu W (2014). Fast implementation of DeLong's algorithm for comparing the areas under "
    "correlated receiver operating characteristic curves. IEEE Signal Process Lett 21:1389-1393.",
    "Obuchowski NA (1997). Nonparametric analysis of clustered ROC curve data. "
    "Biometrics 53:567-578.",
    "Holm S (1979). A simple sequentially rejective multiple test procedure. Scand J Stat 6:65-70.",
    "Robin X, Turck N, Hainard A, et al. (2011). pROC: an open-source package for R and S+ to "
    "analyze and compare ROC curves. BMC Bioinformatics 12:77.",
]

METHOD_REASONS = {
    "scan": {
        "Method": METHODS["scan"],
        "Unit": "participant (one score each)",
        "Reason": "one independent score per participant: DeLong's paired test applies "
        "(two-sided; verified against R pROC roc.test(method = 'delong', paired = TRUE))",
    },
    "image": {
        "Method": METHODS["image"],
        "Unit": "slice, clustered within participant",
        "Reason": "a participant's slices are correlated; treating them as independent "
        "inflates z, so the variance comes from participant (cluster) sums of DeLong "
        "placement values (Obuchowski 1997); with one slice per participant it equals DeLong's",
    },
}


def comparisons_sidecar(result: ModelComparison) -> dict:
    """Return the JSON sidecar of ``desc-delong_comparisons.tsv``."""
    notes = result.notes
    levels = (
        list(dict.fromkeys(result.comparisons["level"])) if not result.comparisons.empty else []
    )
    return {
        "Description": "Paired two-sided comparisons of the ROC AUCs of every pair of models on "
        "the same participants (out-of-fold predictions); class 1 is positive and a higher "
        "score (logit_1 - logit_0) is more positive; ties count 1/2.",
        "Methods": {level: METHOD_REASONS[level] for level in levels},
        "Repeats": (
            f"scores averaged over {notes.get('n_repeats')} cross-validation repeats per "
            "participant, session and slice before testing"
            if notes.get("repeats_averaged")
            else "one cross-validation repeat: scores used as predicted"
        ),
        "Sessions": "participant is the independent unit: at the scan level a participant's "
        "scan scores are averaged over sessions; at the image level slices of all sessions "
        f"form the participant's cluster ({notes.get('participants_with_several_sessions', 0)} "
        "participants had several sessions)",
        "MultipleComparisons": "Holm step-down adjustment across the model pairs within a level",
        "SignificanceStars": {label: f"p_holm <= {bound:g}" for bound, label in STAR_LEVELS}
        | {"ns": "p_holm > 0.05"},
        "Skipped": notes.get("skipped"),
        "level": {"Description": "image (slices) or scan (one score per participant)"},
        "model1": {"Description": "first model (the later one in the predictions' order)"},
        "model2": {"Description": "second model"},
        "auc1": {"Description": "ROC AUC of model1 (pooled over units of the level)"},
        "auc2": {"Description": "ROC AUC of model2"},
        "difference": {"Description": "auc1 - auc2"},
        "se": {"Description": "standard error of the difference"},
        "z": {"Description": "difference / se"},
        "p": {"Description": "two-sided p-value of H0: auc1 = auc2, unadjusted"},
        "p_holm": {"Description": "p adjusted (Holm) across the pairs within the level"},
        "ci_low": {"Description": "lower 95% confidence limit of the difference (normal)"},
        "ci_high": {"Description": "upper 95% confidence limit of the difference (normal)"},
        "stars": {"Description": "significance of p_holm (see SignificanceStars)"},
        "method": {"Description": "test used (see Methods)"},
        "n_participants": {"Description": "participants (clusters) in the test"},
        "n_images": {"Description": "slices in the test at the image level; n/a at scan level"},
        "References": REFERENCES,
    }


def bootstrap_sidecar(result: ModelComparison, intervals: bool) -> dict:
    """Return the JSON sidecar of the bootstrap replicates or confidence-interval table."""
    notes = result.notes
    common = {
        "Description": (
            "Percentile confidence intervals of each model's ROC AUC"
            if intervals
            else "ROC AUC of each bootstrap replicate"
        ),
        "Resampling": "stratified: participants drawn with replacement within each class "
        "(cases and controls separately, class sizes kept); at the image level a drawn "
        "participant brings all its slices; the same draws for every model and both levels",
        "NumberOfReplicates": notes.get("n_replicates"),
        "RandomSeed": notes.get("seed"),
        "Skipped": notes.get("skipped"),
        "level": {"Description": "image or scan"},
        "model": {"Description": "model name"},
    }
    if intervals:
        return common | {
            "ConfidenceLevel": 0.95,
            "Quantiles": "linear interpolation (R type 7, as pROC ci.auc)",
            "auc": {"Description": "ROC AUC on the full (not resampled) data"},
            "ci_low": {"Description": "2.5th percentile of the replicate AUCs"},
            "ci_high": {"Description": "97.5th percentile of the replicate AUCs"},
            "n_replicates": {"Description": "replicates with a defined AUC"},
        }
    return common | {
        "replicate": {"Description": "replicate index, shared across models and levels"},
        "auc": {"Description": "ROC AUC of the replicate"},
    }
