"""The result-folder contract: analytic log-normal summaries and cell2location names."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spotmap.results import add_posterior, lognormal_summaries, read_results, write_results


def test_lognormal_summaries_match_sampling():
    rng = np.random.default_rng(0)
    loc, scale = rng.normal(0, 1, (3, 2)), rng.uniform(0.1, 0.8, (3, 2))
    s = lognormal_summaries(loc, scale)
    draws = np.exp(loc + scale * rng.standard_normal((200_000, 3, 2)))
    np.testing.assert_allclose(s["means"], draws.mean(0), rtol=0.02)
    np.testing.assert_allclose(s["stds"], draws.std(0), rtol=0.05)
    np.testing.assert_allclose(s["q05"], np.quantile(draws, 0.05, axis=0), rtol=0.02)
    np.testing.assert_allclose(s["q95"], np.quantile(draws, 0.95, axis=0), rtol=0.02)
    assert np.all(s["q05"] < s["q50"]) and np.all(s["q50"] < s["q95"])


def test_write_and_read_back(tmp_path):
    a = ad.AnnData(np.ones((4, 3), dtype=np.float32), obs=pd.DataFrame(index=[f"s_{i}" for i in range(4)]))
    loc, scale = np.log(np.arange(1, 9, dtype=float).reshape(4, 2)), np.full((4, 2), 0.2)
    add_posterior(a, loc, scale, ["T cell", "B"], np.array([100.0, 10.0]), chunk_size=3)
    assert list(a.obsm["q05_cell_abundance_w_sf"].columns) == ["q05cell_abundance_w_sf_T cell", "q05cell_abundance_w_sf_B"]
    write_results(a, tmp_path)
    w = pd.read_csv(tmp_path / "W_cell_density.csv", index_col=0)
    u = pd.read_csv(tmp_path / "W_mRNA_count_q05.csv", index_col=0)
    assert list(w.columns) == ["T cell", "B"]
    np.testing.assert_allclose(u["T cell"], pd.read_csv(tmp_path / "W_cell_density_q05.csv", index_col=0)["T cell"] * 100,
                               rtol=1e-5)
    b = read_results(tmp_path)
    np.testing.assert_allclose(b.obsm["w_sf_loc"], loc, rtol=1e-6)


def test_read_results_refuses_foreign_folder(tmp_path):
    from spotmap.errors import SpotmapError

    with pytest.raises(SpotmapError, match="sp.h5ad"):
        read_results(tmp_path)
    ad.AnnData(np.ones((2, 2))).write_h5ad(tmp_path / "sp.h5ad")
    with pytest.raises(SpotmapError, match="w_sf_loc"):
        read_results(tmp_path)


@pytest.mark.parametrize("odd_names", [False, True], ids=["plain-names", "names-needing-quotes"])
def test_matrix_csv_reads_back_as_pandas_writes_it(tmp_path, odd_names):
    from spotmap.utils import write_matrix_csv

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random((50, 3)), rng.random((50, 3)) * 1e-6, rng.random((50, 3)) * 1e4])
    index = [f"s_{i}" for i in range(150)]
    columns = ["T cell", "B", "NK"]
    if odd_names:
        index[3], columns[1] = "s,3", 'B "naive"'
    df = pd.DataFrame(values.astype(np.float32), index=pd.Index(index, name="spot_id"), columns=columns)
    write_matrix_csv(df, tmp_path / "fast.csv")
    df.to_csv(tmp_path / "pandas.csv")
    fast, slow = (pd.read_csv(tmp_path / f, index_col=0) for f in ("fast.csv", "pandas.csv"))
    pd.testing.assert_frame_equal(fast, slow)
    assert fast.index.name == "spot_id" and list(fast.columns) == columns
    if not odd_names:   # the lines pandas writes, exponents aside
        lines = (tmp_path / "fast.csv").read_text().splitlines()
        assert lines[:51] == (tmp_path / "pandas.csv").read_text().splitlines()[:51]
    assert not list(tmp_path.glob(".*.tmp"))
