"""The shared SVI loop: convergence rule, checkpoints (safe loading, fingerprints), non-finite loss."""

from __future__ import annotations

import pickle

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from spotmap.errors import SpotmapError
from spotmap.training import TrainConfig, load_checkpoint, train_svi

DATA = torch.tensor(np.random.default_rng(0).normal(3.0, 1.0, size=200), dtype=torch.float32)


def model(idx):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("obs", len(DATA), subsample=idx):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=DATA[idx])


def guide(idx):
    loc = pyro.param("mu_loc", torch.tensor(0.0))
    scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def kwargs(idx):
    return {"idx": torch.arange(len(DATA)) if idx is None else idx}


def test_convergence_rule_stops_and_is_recorded():
    cfg = TrainConfig(max_epochs=3000, lr=0.05, min_epochs=50, window=20, tol=1e-3, progress=False)
    hist = train_svi(model, guide, len(DATA), kwargs, cfg)
    assert hist.attrs["converged"] and len(hist) < 3000
    last = hist.iloc[-1]
    assert last["rel_change"] < 1e-3 and last["epoch"] >= 50
    w = 20
    e = hist["elbo"].to_numpy()
    rel = abs(e[-w:].mean() - e[-2 * w:-w].mean()) / (e[0] - e[-w:].mean())
    assert rel == pytest.approx(last["rel_change"], rel=1e-9)
    assert hist["rel_change"].iloc[: 2 * w - 1].isna().all()
    assert abs(float(pyro.param("mu_loc")) - float(DATA.mean())) < 0.2


def test_checkpoint_resume_bit_identical_minibatch(tmp_path):
    base = dict(lr=0.05, batch_size=64, seed=7, min_epochs=10**6, progress=False, checkpoint_every=4,
                fingerprint={"case": "toy"})
    full = train_svi(model, guide, len(DATA), kwargs, TrainConfig(max_epochs=20, checkpoint_path=tmp_path / "a.pt", **base))
    loc_full = float(pyro.param("mu_loc"))
    train_svi(model, guide, len(DATA), kwargs, TrainConfig(max_epochs=9, checkpoint_path=tmp_path / "b.pt", **base))
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 9
    res = train_svi(model, guide, len(DATA), kwargs, TrainConfig(max_epochs=20, checkpoint_path=tmp_path / "b.pt", **base))
    assert float(pyro.param("mu_loc")) == loc_full
    np.testing.assert_array_equal(full["elbo"].to_numpy(), res["elbo"].to_numpy())


def test_checkpoint_of_other_settings_is_ignored_and_pickles_are_refused(tmp_path):
    base = dict(lr=0.05, seed=1, min_epochs=10**6, progress=False, checkpoint_every=5)
    ck = tmp_path / "c.pt"
    train_svi(model, guide, len(DATA), kwargs, TrainConfig(max_epochs=10, checkpoint_path=ck, fingerprint={"a": 1}, **base))
    hist = train_svi(model, guide, len(DATA), kwargs,
                     TrainConfig(max_epochs=12, checkpoint_path=ck, fingerprint={"a": 2}, **base))
    assert hist["epoch"].iloc[0] == 1 and len(hist) == 12

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"epoch": Evil()}))
    with pytest.raises(SpotmapError, match="evil.pt.*cannot be loaded"):
        load_checkpoint(evil)


def test_non_finite_loss_names_epoch_and_cause():
    def bad_model(idx):
        pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.factor("nan", torch.tensor(float("nan")))

    with pytest.raises(SpotmapError, match="epoch 1: the loss is not finite.*my hint"):
        train_svi(bad_model, guide, len(DATA), kwargs, TrainConfig(max_epochs=5, progress=False, nan_hint="my hint"))


def test_log_lines_come_by_time_as_well_as_by_epochs(caplog, monkeypatch):
    """Without a progress bar a line is logged every ``log_every`` epochs and at least every ``log_seconds``
    (with the time per epoch and the most left to go), so a slow run's task log is never silent for long."""
    import logging

    from spotmap import training

    clock = iter(range(0, 10**6, 7))  # every reading of the clock is 7 s after the last
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(clock)))
    cfg = TrainConfig(max_epochs=12, lr=0.05, min_epochs=10**6, progress=False, log_every=10, log_seconds=20.0)
    with caplog.at_level(logging.INFO, logger="spotmap"):
        train_svi(model, guide, len(DATA), kwargs, cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    epochs = [int(line.split()[1].split("/")[0]) for line in lines]
    assert 10 in epochs and len(epochs) >= 3, lines   # by epochs, and by time in between
    assert all(b - a <= 3 for a, b in zip([0] + epochs, epochs)), epochs   # ≤ 21 s of fake clock apart
    assert "s per epoch, at most" in lines[0] and lines[-1].endswith("to go")
    cfg = TrainConfig(max_epochs=12, lr=0.05, min_epochs=10**6, progress=False, log_every=10, log_seconds=0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spotmap"):
        train_svi(model, guide, len(DATA), kwargs, cfg)
    assert [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("epoch ")] == ["10/12"]
    assert training._duration(3725) == "1 h 02 min" and training._duration(75) == "1 min 15 s"


@pytest.mark.parametrize("constant", [1e6, -1e6, 0.0])
def test_stopping_epoch_does_not_depend_on_a_constant_in_the_loss(constant):
    """The models drop constants from the -ELBO (log d!): adding one must not move the stopping epoch."""
    from pyro.infer import Trace_ELBO

    base = Trace_ELBO()

    def loss(model_, guide_, *args, **kw):
        # in float64: a float32 loss + 1e6 is rounded to 1/16, which moves the statistic by more than rtol
        return base.differentiable_loss(model_, guide_, *args, **kw).double() + constant

    cfg = TrainConfig(max_epochs=3000, lr=0.05, min_epochs=50, window=20, tol=1e-3, progress=False, seed=3)
    hist = train_svi(model, guide, len(DATA), kwargs, cfg, loss=loss)
    ref = train_svi(model, guide, len(DATA), kwargs, cfg)
    assert hist.attrs["converged"] and 50 <= len(hist) < 3000
    assert len(hist) == len(ref)
    np.testing.assert_allclose(hist["rel_change"].to_numpy(), ref["rel_change"].to_numpy(), rtol=1e-3, equal_nan=True)


def test_relative_change_is_invariant_to_shift_and_scale():
    from spotmap.training import relative_change

    rng = np.random.default_rng(0)
    elbos = list(1000 * np.exp(-np.arange(300) / 50) + rng.normal(0, 1, 300))
    r = relative_change(elbos, 50)
    assert np.isfinite(r) and r > 0
    assert relative_change([x + 1e7 for x in elbos], 50) == pytest.approx(r, rel=1e-6)
    assert relative_change([3 * x - 5e5 for x in elbos], 50) == pytest.approx(r, rel=1e-9)
    assert np.isnan(relative_change(elbos[:99], 50))
    assert relative_change([float(i) for i in range(200)], 50) == float("inf")  # -ELBO going up: not converged
