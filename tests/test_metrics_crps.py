import torch

from probml.metrics import crps_ensemble


def test_crps_matches_pairwise_definition_and_point_mass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 2, generator=g, dtype=torch.float64)
    lw = torch.randn(3, 50, generator=g, dtype=torch.float64)
    w = torch.softmax(lw, -1)[..., None]
    t1 = (w * (x - y[:, None]).abs()).sum(1)
    pair = (x[:, :, None] - x[:, None]).abs()  # 3 x N x N x d
    t2 = (w[:, :, None] * w[:, None] * pair).sum((1, 2))
    assert torch.allclose(crps_ensemble(x, y, lw), t1 - 0.5 * t2)
    # point mass: CRPS is the absolute error
    pm = torch.zeros(1, 4, 1, dtype=torch.float64)
    assert torch.allclose(
        crps_ensemble(pm, torch.ones(1, 1, dtype=torch.float64)), torch.ones(1, 1).double()
    )
    # Gaussian closed form: CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi)
    big = torch.randn(200000, 1, generator=g, dtype=torch.float64)
    ref = 2 / (2 * torch.pi) ** 0.5 - 1 / torch.pi**0.5
    assert abs(float(crps_ensemble(big, torch.zeros(1, dtype=torch.float64))) - ref) < 5e-3


def test_empty_inputs_are_refused_by_name():
    """An empty ensemble failed with a ZeroDivisionError; empty ratios gave NaN."""
    import numpy as np
    import pytest

    from probml.metrics import log_tau_mse

    with pytest.raises(ValueError, match="at least one particle"):
        crps_ensemble(torch.zeros(0, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="at least one ratio"):
        log_tau_mse(np.array([]), np.array([]))


def test_nan_inputs_are_refused_and_zero_weights_allowed():
    """A NaN particle, truth or log-weight gave a NaN CRPS without a word, and so did
    relative_error; a -inf log-weight is a particle of weight zero and stays allowed."""
    import pytest

    from probml.metrics import relative_error

    x = torch.tensor([[[0.0], [1.0], [5.0]]], dtype=torch.float64)
    y = torch.tensor([[0.5]], dtype=torch.float64)
    lw = torch.tensor([[0.0, 0.0, -torch.inf]], dtype=torch.float64)
    two = crps_ensemble(x[:, :2], y)  # the third particle has weight zero
    assert torch.allclose(crps_ensemble(x, y, lw), two)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    for kw, name in (
        ({"particles": x.clone().index_put_((torch.tensor([0]),), nan)}, "particles"),
        ({"truth": y * nan}, "truth"),
    ):
        args = {"particles": x, "truth": y, **kw}
        with pytest.raises(ValueError, match=f"^{name} must be finite"):
            crps_ensemble(args["particles"], args["truth"])
    for bad in (lw.clone().fill_(-torch.inf), torch.tensor([[0.0, nan, 0.0]]).double()):
        with pytest.raises(ValueError, match="^log_weights must be finite or -inf"):
            crps_ensemble(x, y, bad)
    with pytest.raises(ValueError, match="^estimate must be finite"):
        relative_error(torch.tensor([[nan]]), torch.tensor([[1.0]]).double())
