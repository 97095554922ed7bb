"""The row-wise clipped Adam of the SVI loop: pyro's ClippedAdam exactly when every row has a gradient;
rows without one untouched; each row updated as if optimised alone."""

from __future__ import annotations

import torch
from pyro.optim.clipped_adam import ClippedAdam

from spotmap.optim import LazyClippedAdam


def _run(opt_cls, grads, rows_per_step=None, **kw):
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(6, 3))
    opt = opt_cls([x], lr=0.05, clip_norm=2.0, **kw)
    for i, g in enumerate(grads):
        g = g.clone()
        if rows_per_step is not None:
            mask = torch.zeros(6, 1)
            mask[rows_per_step[i]] = 1.0
            g = g * mask
        x.grad = g
        opt.step()
    return x.detach().clone(), opt


def test_full_gradients_give_pyros_clipped_adam_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(6, 3, generator=gen) * 3 for _ in range(25)]   # some beyond the clip of 2
    mine, _ = _run(LazyClippedAdam, grads)
    theirs, _ = _run(ClippedAdam, grads)
    assert torch.equal(mine, theirs)


def test_rows_without_gradient_keep_value_and_state_and_rows_update_as_if_alone():
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(6, 3, generator=gen) for _ in range(12)]
    batches = [[0, 1, 2], [3, 4, 5]] * 6                                  # two minibatches per "epoch"
    x, opt = _run(LazyClippedAdam, grads, batches)
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    # rows 0-2 saw the gradients of steps 0, 2, 4, ...: the same as six plain Adam steps on those rows alone
    alone = torch.nn.Parameter(start[:3].clone())
    plain = ClippedAdam([alone], lr=0.05, clip_norm=2.0)
    for g in grads[0::2]:
        alone.grad = g[:3].clone()
        plain.step()
    assert torch.allclose(x[:3], alone.detach(), rtol=0, atol=1e-6)
    state = opt.state[next(iter(opt.state))]
    assert state["row_step"].tolist() == [6] * 6
    # pyro's ClippedAdam moves the rows outside each minibatch too (the stale momentum this optimiser avoids)
    stale, _ = _run(ClippedAdam, grads, batches)
    assert not torch.allclose(stale[:3], alone.detach(), atol=1e-3)


def test_a_row_never_in_a_batch_never_moves():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 3, generator=gen) for _ in range(5)]
    x, opt = _run(LazyClippedAdam, grads, [[0, 1, 2, 3, 4]] * 5)
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    assert torch.equal(x[5], start[5])
    state = opt.state[next(iter(opt.state))]
    assert state["row_step"][5] == 0 and float(state["exp_avg"][5].abs().sum()) == 0.0


def test_state_survives_a_checkpoint_round_trip():
    """Resuming a minibatch run restores the optimiser through Optimizer.load_state_dict (which casts the
    per-row step counts to float): the resumed steps must equal the uninterrupted ones exactly."""
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(6, 3, generator=gen) for _ in range(8)]
    batches = [[0, 1, 2], [3, 4, 5]] * 4
    whole, _ = _run(LazyClippedAdam, grads, batches)
    first, opt = _run(LazyClippedAdam, grads[:4], batches[:4])
    x = torch.nn.Parameter(first.clone())
    resumed = LazyClippedAdam([x], lr=0.05, clip_norm=2.0)
    resumed.load_state_dict(opt.state_dict())
    for g, rows in zip(grads[4:], batches[4:]):
        mask = torch.zeros(6, 1)
        mask[rows] = 1.0
        x.grad = g * mask
        resumed.step()
    assert torch.equal(x.detach(), whole)


def _first_step(local_lr, batch_size, checkpoint=None, scale_global_clip=False):
    """One epoch of train_svi on a toy model with a per-observation mean (local) and a shared scale (global);
    returns how far each parameter moved."""
    import pyro
    import pyro.distributions as dist

    from spotmap.training import TrainConfig, train_svi

    y = torch.linspace(-1.0, 1.0, 8)

    def model(idx):
        with pyro.plate("obs", 8, subsample=idx):
            pyro.sample("y", dist.Normal(pyro.param("mu_loc")[idx, 0], pyro.param("sigma")), obs=y[idx])

    def guide(idx):
        pyro.param("mu_loc", lambda: torch.full((8, 1), 3.0))  # rows: first dim
        pyro.param("sigma", lambda: torch.tensor(2.0))

    cfg = TrainConfig(max_epochs=1, lr=0.01, local_lr=local_lr, local_params=("mu_loc",), batch_size=batch_size,
                      progress=False, checkpoint_path=checkpoint, checkpoint_every=1 if checkpoint else None,
                      scale_global_clip=scale_global_clip)
    train_svi(model, guide, 8, lambda idx: {"idx": torch.arange(8) if idx is None else idx}, cfg)
    store = pyro.get_param_store()
    return (store["mu_loc"].detach() - 3.0).abs(), (store["sigma"].detach() - 2.0).abs()


def test_local_learning_rate_applies_to_named_parameters_in_minibatches_only():
    # Adam's first step moves every coordinate by the learning rate (|m̂ / √v̂| = 1)
    mu, sigma = _first_step(local_lr=0.05, batch_size=8)                # full batch: local_lr ignored
    torch.testing.assert_close(mu, torch.full((8, 1), 0.01))
    mu, sigma = _first_step(local_lr=0.05, batch_size=4)                # two minibatches
    torch.testing.assert_close(mu, torch.full((8, 1), 0.05))            # each row: one step at local_lr
    assert 0.015 < float(sigma) < 0.021                                # two steps at lr
    mu, _ = _first_step(local_lr=None, batch_size=4)
    torch.testing.assert_close(mu, torch.full((8, 1), 0.01))


def test_local_parameters_are_clipped_as_in_full_batch_training(tmp_path):
    # the plate scales a minibatch's likelihood by n / batch (8 / 2 here): the local clip threshold follows
    from spotmap.training import load_checkpoint

    def clip_norms(**kw) -> dict:
        _first_step(local_lr=None, checkpoint=tmp_path / "ckpt.pt", **kw)
        optim_state = load_checkpoint(tmp_path / "ckpt.pt")["optim"]
        (tmp_path / "ckpt.pt").unlink()
        return {name: state["param_groups"][0]["clip_norm"] for name, state in optim_state.items()}

    assert clip_norms(batch_size=2) == {"mu_loc": 40.0, "sigma": 10.0}
    # scale_global_clip (the spatial model): global gradients, minibatch estimates whose spread grows with
    # n / batch, are clipped at the scaled threshold too; full-batch training keeps the threshold everywhere
    assert clip_norms(batch_size=2, scale_global_clip=True) == {"mu_loc": 40.0, "sigma": 40.0}
    assert clip_norms(batch_size=8, scale_global_clip=True) == {"mu_loc": 10.0, "sigma": 10.0}
