"""Exact checks of spotmap.metrics on small hand-made cases."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spotmap.errors import SpotmapError
from spotmap.metrics import (
    average_precision,
    aupr_presence,
    evaluate,
    median_pearson,
    nnls_abundance,
    per_type_pearson,
    proportions,
    rmse_proportions,
)


@pytest.fixture
def truth() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, size=(40, 5)).astype(float)
    x[:, 4] *= rng.random(40) < 0.3  # a sparse, "rare" type
    x[0, 4] = 3.0
    return pd.DataFrame(x, index=[f"s1_BC{i:03d}-1" for i in range(40)], columns=list("ABCDE"))


def test_perfect_estimate(truth):
    m = evaluate(truth.copy(), truth)
    assert m["median_pearson"] == pytest.approx(1.0)
    assert m["min_pearson"] == pytest.approx(1.0)
    assert m["rmse_proportions"] == pytest.approx(0.0, abs=1e-12)
    assert m["aupr"] == pytest.approx(1.0)
    assert (m["n_spots"], m["n_types"]) == (40, 5)


def test_scaled_estimate_keeps_r_and_proportions(truth):
    est = truth * 3.7 + 0.0
    r = per_type_pearson(est, truth)
    np.testing.assert_allclose(r.to_numpy(), 1.0)
    assert rmse_proportions(est, truth) == pytest.approx(0.0, abs=1e-12)


def test_absolute_metrics_see_the_scale_that_r_and_proportions_miss(truth):
    m = evaluate(truth * 0.5, truth)
    assert m["median_pearson"] == pytest.approx(1.0) and m["rmse_proportions"] == pytest.approx(0.0, abs=1e-12)
    assert m["total_ratio"] == pytest.approx(0.5)
    expected = np.mean(np.sqrt(((0.5 * truth.to_numpy()) ** 2).mean(1)))  # |0.5 t - t| per spot and type
    assert m["rmse_counts"] == pytest.approx(expected) and m["rmse_counts"] > 0.5
    exact = evaluate(truth.copy(), truth)
    assert exact["total_ratio"] == pytest.approx(1.0) and exact["rmse_counts"] == pytest.approx(0.0, abs=1e-12)


def test_shuffled_estimate_is_worse(truth):
    rng = np.random.default_rng(1)
    est = pd.DataFrame(truth.to_numpy()[rng.permutation(len(truth))], index=truth.index, columns=truth.columns)
    m = evaluate(est, truth)
    assert m["median_pearson"] < 0.5
    assert m["rmse_proportions"] > 0.05
    assert m["aupr"] < 0.95


def test_alignment_is_by_label_not_position(truth):
    rng = np.random.default_rng(2)
    est = truth.iloc[rng.permutation(len(truth)), ::-1]
    a, b = evaluate(est, truth), evaluate(truth, truth)
    for k in ("median_pearson", "rmse_proportions", "aupr"):
        assert a[k] == pytest.approx(b[k])
    assert list(per_type_pearson(est, truth).index) == list("ABCDE")


def test_pearson_matches_numpy_and_edge_cases():
    t = pd.DataFrame({"A": [1.0, 2, 3, 4], "B": [0.0, 1, 0, 3], "C": [2.0, 2, 2, 2]}, index=list("wxyz"))
    e = pd.DataFrame({"A": [1.0, 3, 2, 5], "B": [5.0, 5, 5, 5], "C": [1.0, 2, 3, 4]}, index=list("wxyz"))
    r = per_type_pearson(e, t)
    assert r["A"] == pytest.approx(np.corrcoef(e["A"], t["A"])[0, 1])
    assert r["B"] == 0.0          # constant estimate: no information
    assert np.isnan(r["C"])       # constant truth: undefined
    assert median_pearson(e, t) == pytest.approx(np.median([r["A"], 0.0]))


def test_rmse_by_hand():
    t = pd.DataFrame([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]], index=["a", "b", "c"], columns=["X", "Y"])
    e = pd.DataFrame([[2.0, 0.0], [5.0, 0.0], [1.0, 1.0]], index=["a", "b", "c"], columns=["X", "Y"])
    # spot a: (1,0) vs (.5,.5) -> sqrt((.25+.25)/2) = .5; spot b: 0; spot c: empty truth, left out
    assert rmse_proportions(e, t) == pytest.approx(0.25)


def test_proportions_zero_row_and_negative():
    p = proportions(pd.DataFrame([[1.0, 3.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p.to_numpy(), [[0.25, 0.75], [0.0, 0.0]])
    with pytest.raises(SpotmapError, match="non-negative"):
        proportions(pd.DataFrame([[1.0, -1.0]]))


def test_average_precision_by_hand():
    # ranks: + - + -  -> precision 1 at recall .5, 2/3 at recall 1
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 1, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # all scores tied: one threshold, precision = prevalence, independent of order
    assert average_precision([1, 0, 0, 0], [1.0] * 4) == pytest.approx(0.25)
    assert average_precision([0, 0, 0, 1], [1.0] * 4) == pytest.approx(0.25)
    with pytest.raises(SpotmapError, match="no positive"):
        average_precision([0, 0], [1.0, 2.0])


def test_aupr_presence_perfect_ranking_and_reversed():
    t = pd.DataFrame([[0.0, 2.0], [1.0, 0.0]], index=["a", "b"], columns=["X", "Y"])
    assert aupr_presence(pd.DataFrame([[0.1, 0.9], [0.8, 0.2]], index=["a", "b"], columns=["X", "Y"]), t) == 1.0
    rev = aupr_presence(pd.DataFrame([[0.9, 0.1], [0.2, 0.8]], index=["a", "b"], columns=["X", "Y"]), t)
    assert rev == pytest.approx(0.5 * 1 / 3 + 0.5 * 2 / 4)


def test_mismatch_errors(truth):
    with pytest.raises(SpotmapError, match="1 spots only in the truth"):
        evaluate(truth.iloc[1:], truth)
    with pytest.raises(SpotmapError, match="cell types only in the estimate: 'Z'"):
        evaluate(truth.assign(Z=1.0), truth)
    with pytest.raises(SpotmapError, match="cell types only in the truth: 'E'"):
        evaluate(truth.drop(columns="E"), truth)
    bad = truth.copy()
    bad.iloc[3, 2] = np.nan
    with pytest.raises(SpotmapError, match="non-finite.*'C'"):
        evaluate(bad, truth)
    with pytest.raises(SpotmapError, match="duplicated spot ids"):
        evaluate(pd.concat([truth, truth.iloc[:1]]), truth)
    with pytest.raises(SpotmapError, match="DataFrame"):
        evaluate(truth.to_numpy(), truth)


@pytest.mark.parametrize("sparse", [False, True])
def test_nnls_recovers_noiseless_mixture(sparse):
    rng = np.random.default_rng(3)
    genes = [f"G{i}" for i in range(60)]
    types = ["t1", "t2", "t3", "t4"]
    sig = pd.DataFrame(rng.gamma(1.0, 5.0, size=(60, 4)), index=genes, columns=types)
    w = rng.gamma(1.0, 2.0, size=(25, 4)) * (rng.random((25, 4)) < 0.6)
    X = w @ sig.to_numpy().T
    # spatial genes in another order plus one extra gene the signatures lack
    order = rng.permutation(60)
    Xs = np.c_[X[:, order], rng.random(25)]
    adata = ad.AnnData(X=sp.csr_matrix(Xs) if sparse else Xs,
                       obs=pd.DataFrame(index=[f"s_{i}" for i in range(25)]),
                       var=pd.DataFrame(index=[genes[i] for i in order] + ["extra"]))
    est = nnls_abundance(adata, sig.iloc[::-1], chunk=7)
    assert list(est.columns) == types and list(est.index) == list(adata.obs_names)
    np.testing.assert_allclose(est[types].to_numpy(), w, atol=1e-8)
    truth = pd.DataFrame(w, index=adata.obs_names, columns=types)
    assert evaluate(est, truth)["median_pearson"] == pytest.approx(1.0)


def test_nnls_too_few_shared_genes():
    adata = ad.AnnData(X=np.ones((3, 2)), var=pd.DataFrame(index=["a", "b"]))
    sig = pd.DataFrame(np.ones((3, 3)), index=["a", "x", "y"], columns=["t1", "t2", "t3"])
    with pytest.raises(SpotmapError, match="only 1 genes shared"):
        nnls_abundance(adata, sig)
