"""Our Pyro models under outer plates: ``Predictive(parallel=True)``, vectorised ELBO
particles, a particle plate. Pyro places such a plate left of the model's own, so a global
coefficient arrives as ``S x 1 x p``. Before, four models failed there (``X @ beta`` read the
draws as a stack of ``1 x p`` matrices; PACE's ``Sigma[..., i, j]`` and the spurious-factor
scales put the draw dimension where a data or event dimension was)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from probml.models.adapters import spurious_factor_model
from probml.models.gaussian import private_covariance_model
from probml.models.linear import bayesian_linear_regression
from probml.models.regression import linear_outcome_model
from probml.models.treatment import ratio_q_model
from probml.utils import plate_matvec

S = 5  # draws; equal to the spurious model's D and to PACE's m, so a draw dimension put
# where one of those sits broadcasts silently instead of failing


def _cases():
    g = torch.Generator().manual_seed(0)
    n, p = 12, 3
    Z = torch.randn(n, p, dtype=torch.float64, generator=g)
    y = torch.randn(n, dtype=torch.float64, generator=g)
    wl = (torch.rand(n, generator=g) < 0.5).double()
    entries = torch.tensor([[0, 1], [1, 2], [0, 0], [2, 2], [0, 2]])
    return {
        "linear_outcome_model": (linear_outcome_model, (Z, y), {"Z_new": Z[:4]}, "y", 1),
        "bayesian_linear_regression": (bayesian_linear_regression, (Z, y), {}, "y", 1),
        "ratio_q_model": (
            ratio_q_model,
            (),
            {"Xq": Z, "wq": wl, "Xe": Z, "we": wl.flip(0), "X_new": Z[:4]},
            "w_e",
            1,
        ),
        "private_covariance_model": (
            private_covariance_model,
            (entries, torch.randn(S, dtype=torch.float64, generator=g), torch.ones(S).double()),
            {"dim": 3, "n": 100},
            "y",
            1,
        ),
        "spurious_factor_model": (
            spurious_factor_model,
            (torch.randn(6, S, dtype=torch.float64, generator=g), 2, True),
            {},
            "b",
            0,
        ),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_model_vectorises_over_draws_like_a_loop(name):
    model, args, kwargs, obs, nesting = CASES[name]
    pyro.set_rng_seed(0)
    draws = Predictive(model, num_samples=S, parallel=False)(*args, **kwargs)
    plain = poutine.trace(model).get_trace(*args, **kwargs)
    latent = {
        k: v
        for k, v in draws.items()
        if plain.nodes[k]["type"] == "sample" and not plain.nodes[k]["is_observed"]
    }
    # per draw: the unbatched model (what NUTS runs), one draw at a time
    loop = []
    for s in range(S):
        one = {k: v[s].reshape(plain.nodes[k]["value"].shape) for k, v in latent.items()}
        tr = poutine.trace(poutine.condition(model, data=one)).get_trace(*args, **kwargs)
        loop.append(tr.nodes[obs]["fn"].log_prob(tr.nodes[obs]["value"]).sum())
    # all draws at once under an outer plate, as Predictive(parallel=True) and
    # Trace_ELBO(vectorize_particles=True) run it
    with pyro.plate("draws", S, dim=-nesting - 1):
        tr = poutine.trace(poutine.condition(model, data=latent)).get_trace(*args, **kwargs)
    lp = tr.nodes[obs]["fn"].log_prob(tr.nodes[obs]["value"])
    assert lp.shape[0] == S
    torch.testing.assert_close(lp.reshape(S, -1).sum(-1), torch.stack(loop))
    # and Predictive's vectorised path runs and gives the loop's shapes
    par = Predictive(model, num_samples=S, parallel=True)(*args, **kwargs)
    assert {k: v.shape for k, v in par.items()} == {k: v.shape for k, v in draws.items()}


def test_plate_matvec_is_x_at_w_for_a_plain_draw_and_broadcasts_a_batched_one():
    g = torch.Generator().manual_seed(1)
    X, w = torch.randn(7, 3, generator=g), torch.randn(4, 1, 3, generator=g)
    assert torch.equal(plate_matvec(X, w[0, 0]), X @ w[0, 0])  # to the bit: NUTS runs this
    # wide enough that a broadcast sum rounds differently from the matrix product
    Xd, wd = (
        torch.randn(50, 7, generator=g, dtype=torch.float64),
        torch.randn(7, generator=g, dtype=torch.float64),
    )
    assert not torch.equal((Xd * wd).sum(-1), Xd @ wd)
    assert torch.equal(plate_matvec(Xd, wd), Xd @ wd)
    out = plate_matvec(X, w)
    assert out.shape == (4, 7)
    torch.testing.assert_close(out, torch.stack([X @ w[s, 0] for s in range(4)]))


def test_vectorised_elbo_particles_run_on_the_spurious_factor_model():
    """``Trace_ELBO(vectorize_particles=True)``, a user's natural variance reduction, runs."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    b = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))

    def model():
        spurious_factor_model(b, 2, True)

    pyro.clear_param_store()
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), elbo)
    assert all(torch.isfinite(torch.tensor([svi.step() for _ in range(3)])))
    pyro.clear_param_store()
