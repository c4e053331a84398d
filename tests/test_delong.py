"""DeLong's paired test, the Obuchowski clustered test, Holm and stars, checked against R pROC."""

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_qnet.errors import InputDataError
from bids_qnet.stats.clustered import obuchowski_ci, obuchowski_covariance, obuchowski_test
from bids_qnet.stats.delong import delong_ci, delong_covariance, delong_test
from bids_qnet.stats.metrics import auc_mann_whitney
from bids_qnet.stats.significance import holm, stars

DATA = Path(__file__).parent / "data" / "aSAH.csv"


@pytest.fixture(scope="module")
def asah():
    data = pd.read_csv(DATA, comment="#")
    assert len(data) == 113
    return data.assign(y=(data["outcome"] == "Poor").astype(int))


# pROC 1.18.0: roc.test(roc(outcome, a), roc(outcome, b), method = "delong", paired = TRUE)
@pytest.mark.parametrize(
    ("first", "second", "z", "p"),
    [
        ("s100b", "ndka", 1.39077002573558, 0.164295175223054),
        ("wfns", "s100b", 2.20898359144091, 0.0271757822291882),
        ("wfns", "ndka", 2.79777591868904, 0.00514557970691098),
    ],
)
def test_asah_matches_proc(asah, first, second, z, p):
    result = delong_test(asah["y"], asah[first], asah[second])
    assert result.z == pytest.approx(z, abs=1e-6)
    assert result.p == pytest.approx(p, abs=1e-6)
    assert result.auc1 == pytest.approx(auc_mann_whitney(asah["y"], asah[first]), abs=1e-12)
    assert result.difference == pytest.approx(result.auc1 - result.auc2)
    # Swapping the tests flips z and the interval, keeps p.
    swapped = delong_test(asah["y"], asah[second], asah[first])
    assert swapped.z == pytest.approx(-z, abs=1e-6)
    assert swapped.p == pytest.approx(p, abs=1e-6)


def test_asah_confidence_intervals(asah):
    result = delong_test(asah["y"], asah["s100b"], asah["ndka"])
    assert (round(result.ci_low, 5), round(result.ci_high, 5)) == (-0.04887, 0.28769)
    assert result.auc1 == pytest.approx(0.7313686, abs=1e-7)
    assert result.auc2 == pytest.approx(0.6119580, abs=1e-7)
    single = delong_ci(asah["y"], asah["s100b"])  # pROC: 95% CI: 0.6301182-0.8326189 (DeLong)
    assert (round(single.ci_low, 7), round(single.ci_high, 7)) == (0.6301182, 0.8326189)


def test_direction_is_fixed_and_ties_count_half():
    y = [0, 0, 1, 1]
    assert delong_ci(y, [1, 2, 2, 3]).auc == pytest.approx(3.5 / 4)
    # A test that ranks backwards has AUC < 0.5; its direction is never flipped.
    assert delong_ci(y, [3, 2, 2, 1]).auc == pytest.approx(0.5 / 4)


def _brute_force_covariance(y, scores):
    """DeLong (1988) from its definitions, with explicit pairwise comparisons."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    aucs = psi.mean(axis=(1, 2))
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return aucs, np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_midranks_equal_the_definition(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=(3, 60)) + 0.7 * y, 1)  # rounded: many ties
    aucs, covariance = delong_covariance(y, scores)
    expected_aucs, expected_cov = _brute_force_covariance(y, scores)
    np.testing.assert_allclose(aucs, expected_aucs, atol=1e-12)
    np.testing.assert_allclose(covariance, expected_cov, atol=1e-12)


def test_invalid_inputs_raise():
    with pytest.raises(InputDataError, match="two positives"):
        delong_test([0, 0, 0, 1], [1, 2, 3, 4], [1, 2, 3, 5])
    with pytest.raises(InputDataError, match="finite"):
        delong_test([0, 0, 1, 1], [1, np.nan, 3, 4], [1, 2, 3, 5])
    with pytest.raises(InputDataError, match="0 \\(negative\\) or 1"):
        delong_test([0, 2, 1, 1], [1, 2, 3, 4], [1, 2, 3, 5])


def test_identical_tests_give_z_zero():
    y = [0, 0, 1, 1, 0, 1]
    score = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    result = delong_test(y, score, score)
    assert (result.z, result.p, result.se) == (0.0, 1.0, 0.0)


def _brute_force_obuchowski(y, scores, clusters):
    """Obuchowski (1997) from the paper's definitions, cluster by cluster."""
    labels = np.unique(clusters)
    pos, neg = y == 1, y == 0
    big_m, big_n = pos.sum(), neg.sum()
    out_aucs, parts = [], []
    for s in scores:
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        auc = psi.sum() / (big_m * big_n)
        v10 = np.array([psi[clusters[pos] == c].sum() / big_n for c in labels])
        v01 = np.array([psi[:, clusters[neg] == c].sum() / big_m for c in labels])
        m_i = np.array([np.sum(pos & (clusters == c)) for c in labels])
        n_i = np.array([np.sum(neg & (clusters == c)) for c in labels])
        out_aucs.append(auc)
        parts.append((v10 - m_i * auc, v01 - n_i * auc, m_i, n_i))
    k = len(scores)
    cov = np.zeros((k, k))
    for r, s in itertools.product(range(k), repeat=2):
        d10r, d01r, m_i, n_i = parts[r]
        d10s, d01s, _, _ = parts[s]
        i10, i01, i = np.count_nonzero(m_i), np.count_nonzero(n_i), labels.size
        s10 = i10 / ((i10 - 1) * big_m) * np.sum(d10r * d10s)
        s01 = i01 / ((i01 - 1) * big_n) * np.sum(d01r * d01s)
        s11 = i / (i - 1) * (np.sum(d10r * d01s) + np.sum(d10s * d01r))
        cov[r, s] = s10 / big_m + s01 / big_n + s11 / (big_m * big_n)
    return np.array(out_aucs), cov


def test_obuchowski_equals_the_definition_with_mixed_clusters():
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(15), rng.integers(1, 6, 15))
    y = rng.integers(0, 2, clusters.size)  # clusters may hold both classes
    effect = rng.normal(size=15)[clusters]
    scores = np.round(np.vstack([effect + y, effect + 0.5 * y]) + rng.normal(size=(2, y.size)), 1)
    aucs, covariance = obuchowski_covariance(y, scores, clusters)
    expected_aucs, expected_cov = _brute_force_obuchowski(y, scores, clusters)
    np.testing.assert_allclose(aucs, expected_aucs, atol=1e-12)
    np.testing.assert_allclose(covariance, expected_cov, atol=1e-12)


def test_obuchowski_with_singleton_clusters_equals_delong(asah):
    clusters = np.arange(len(asah))
    clustered = obuchowski_test(asah["y"], asah["s100b"], asah["ndka"], clusters)
    plain = delong_test(asah["y"], asah["s100b"], asah["ndka"])
    assert clustered.z == pytest.approx(plain.z, abs=1e-12)
    assert clustered.se == pytest.approx(plain.se, abs=1e-12)
    single = obuchowski_ci(asah["y"], asah["s100b"], clusters)
    assert single.se == pytest.approx(delong_ci(asah["y"], asah["s100b"]).se, abs=1e-12)


def test_duplicating_subjects_leaves_the_clustered_z_unchanged():
    rng = np.random.default_rng(11)
    n = 40
    y = np.repeat([0, 1], n // 2)
    subject = rng.normal(size=n)
    first = subject + 0.9 * y + 0.6 * rng.normal(size=n)
    second = subject + 0.3 * y + 0.6 * rng.normal(size=n)
    once = delong_test(y, first, second)
    copies = 5
    clustered = obuchowski_test(
        np.repeat(y, copies),
        np.repeat(first, copies),
        np.repeat(second, copies),
        np.repeat(np.arange(n), copies),
    )
    naive = delong_test(np.repeat(y, copies), np.repeat(first, copies), np.repeat(second, copies))
    assert clustered.z == pytest.approx(once.z, rel=1e-10)
    assert clustered.difference == pytest.approx(once.difference, abs=1e-12)
    # Treating copies as independent shrinks the standard error by about sqrt(5).
    assert abs(naive.z) > 2.0 * abs(once.z)
    assert naive.z / once.z == pytest.approx(np.sqrt(copies), rel=0.1)


def test_holm_matches_r_p_adjust():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), method = "holm") -> 0.03 0.06 0.06 0.02
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.5, 0.3, np.nan, 0.2])  # NaN kept and not counted
    assert np.isnan(adjusted[2])
    np.testing.assert_allclose(adjusted[[0, 1, 3]], [0.6, 0.6, 0.6])
    raw = np.random.default_rng(0).uniform(0, 0.3, 12)
    adjusted = holm(raw)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1.0)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values
    with pytest.raises(InputDataError):
        holm([0.2, 1.5])


def test_stars_thresholds():
    assert [stars(p) for p in (1e-5, 1e-4, 1.1e-4, 1e-3, 0.0011, 0.01, 0.0101, 0.05)] == [
        "****",
        "****",
        "***",
        "***",
        "**",
        "**",
        "*",
        "*",
    ]
    assert stars(0.0501) == "ns" and stars(1.0) == "ns" and stars(np.nan) == ""


R_SCRIPT = """
suppressMessages(library(pROC))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
r1 <- roc(d$y, d$a, levels = c(0, 1), direction = "<", quiet = TRUE)
r2 <- roc(d$y, d$b, levels = c(0, 1), direction = "<", quiet = TRUE)
t <- roc.test(r1, r2, method = "delong", paired = TRUE)
ci1 <- ci.auc(r1, method = "delong")
out <- c(auc1 = as.numeric(auc(r1)), auc2 = as.numeric(auc(r2)), z = unname(t$statistic),
         p = t$p.value, ci_low = t$conf.int[1], ci_high = t$conf.int[2],
         single_low = ci1[1], single_high = ci1[3])
cat(sprintf("%s=%.17g", names(out), out), sep = "\\n")
"""


def _proc_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    check = subprocess.run(
        ["Rscript", "-e", "suppressMessages(library(pROC))"], capture_output=True, timeout=120
    )
    return check.returncode == 0


def _random_scores(seed: int, discrete: bool):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 120))
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1
    latent = rng.normal(size=n)
    if discrete:  # a 5-point rating: heavy ties
        a = np.clip(np.round(latent + y + rng.normal(size=n) * 0.8), -2, 2)
        b = np.clip(np.round(0.5 * latent + 0.6 * y + rng.normal(size=n)), -2, 2)
    else:
        a = np.round(latent + 0.9 * y + rng.normal(size=n), 1)
        b = np.round(latent + 0.4 * y + rng.normal(size=n), 1)
    return y, a, b


@pytest.mark.parametrize(("seed", "discrete"), [(0, False), (1, False), (2, True), (3, True)])
def test_live_against_r_proc(tmp_path, seed, discrete):
    if not _proc_available():
        pytest.skip("Rscript with the pROC package is not installed (Debian: r-cran-proc)")
    y, a, b = _random_scores(seed, discrete)
    data = tmp_path / "scores.csv"
    pd.DataFrame({"y": y, "a": a, "b": b}).to_csv(data, index=False, float_format="%.17g")
    script = tmp_path / "delong.R"
    script.write_text(R_SCRIPT)
    done = subprocess.run(
        ["Rscript", str(script), str(data)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    reference = {k: float(v) for k, v in (line.split("=") for line in done.stdout.split())}
    result = delong_test(y, a, b)
    single = delong_ci(y, a)
    ours = {**result.to_dict(), "single_low": single.ci_low, "single_high": single.ci_high}
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), (key, json.dumps(reference))
