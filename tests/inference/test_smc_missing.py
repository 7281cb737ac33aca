"""Missing observations (NaN) in the filters: the update uses the observed components, and a
step with none observed only propagates. Before, a NaN was refused with the advice to drop
the observation, which would have filtered the remaining ones with a time step missing."""

import math

import pytest
import torch

from probml.inference.smc import SURGE, BootstrapPF, EnKF, kalman_filter
from probml.models.diffusion import LinearGaussianDiffusion
from probml.models.dynamics import LinearGaussianSSM

NAN = float("nan")


def _joint_filtering(A, Q, H, R, ys, m0, P0):
    """Filtering means and the evidence from the joint Gaussian of (x_1..x_T, y_1..y_T) given
    x_0 ~ N(m0, P0), conditioned on the observed entries only: no recursion, no Kalman."""
    T, p = ys.shape
    d = A.shape[0]
    # x_t = A^t x_0 + sum_{s<=t} A^{t-s} w_s: stack the linear maps of (x_0, w_1..w_T)
    F = torch.zeros(T * d, (T + 1) * d, dtype=A.dtype)
    for t in range(1, T + 1):
        F[(t - 1) * d : t * d, :d] = torch.linalg.matrix_power(A, t)
        for s in range(1, t + 1):
            F[(t - 1) * d : t * d, s * d : (s + 1) * d] = torch.linalg.matrix_power(A, t - s)
    C0 = torch.block_diag(P0, *[Q] * T)
    mx = F[:, :d] @ m0
    Cx = F @ C0 @ F.T
    Hb = torch.block_diag(*[H] * T)
    Rt = R * torch.eye(p, dtype=A.dtype) if not isinstance(R, torch.Tensor) else R
    my, Cy = Hb @ mx, Hb @ Cx @ Hb.T + torch.block_diag(*[Rt] * T)
    Cxy = Cx @ Hb.T
    yv = ys.reshape(-1)
    means, ll = [], None
    for t in range(1, T + 1):
        o = ~torch.isnan(yv)
        o[t * p :] = False  # y_1..y_t
        idx = o.nonzero().flatten()
        rows = slice((t - 1) * d, t * d)
        if idx.numel() == 0:
            means.append(mx[rows])
            continue
        gain = torch.linalg.solve(Cy[idx][:, idx], Cxy[rows][:, idx].T).T
        means.append(mx[rows] + gain @ (yv[idx] - my[idx]))
        if t == T:
            ll = torch.distributions.MultivariateNormal(my[idx], Cy[idx][:, idx]).log_prob(yv[idx])
    return torch.stack(means), ll


@pytest.fixture(scope="module")
def lg():
    ssm = LinearGaussianSSM.random(dim=3, obs_every=1, obs_noise=0.5, generator=2)
    xs, ys = ssm.simulate(4, num_trajectories=6, generator=5)
    ys = ys.clone()
    ys[1, :3] = NAN  # trajectories 0-2 see nothing at t = 2
    ys[2, 3, 0] = NAN  # partial rows
    ys[3, 4, 1:] = NAN
    ys[0, 5, 2] = NAN
    return ssm, ys


def test_kalman_filter_with_missing_values_is_the_joint_gaussian_conditional(lg):
    ssm, ys = lg
    H, R = ssm.observation.H, ssm.observation.noise_scale**2
    m0 = torch.zeros(ys.shape[1], 3, dtype=torch.float64)
    P0 = 0.3 * torch.eye(3, dtype=torch.float64)
    m, P, ll = kalman_filter(ssm.A, ssm.Q, H, R, ys, m0, P0)
    assert m.shape == (4, 6, 3) and P.shape == (4, 6, 3, 3) and ll.shape == (6,)
    for b in range(ys.shape[1]):
        ref_m, ref_ll = _joint_filtering(ssm.A, ssm.Q, H, R, ys[:, b], m0[b], P0)
        torch.testing.assert_close(m[:, b], ref_m)
        torch.testing.assert_close(ll[b], ref_ll)
        mb, Pb, llb = kalman_filter(ssm.A, ssm.Q, H, R, ys[:, b], m0[b], P0)  # unbatched
        torch.testing.assert_close(mb, m[:, b])
        torch.testing.assert_close(Pb, P[:, b])
    # correlated observation noise: the observed components' marginal is R's sub-block
    L = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.4, 0.0], [-0.1, 0.3, 0.6]], dtype=torch.float64)
    Rfull = L @ L.T
    m, _, ll = kalman_filter(ssm.A, ssm.Q, H, Rfull, ys, m0, P0)
    for b in range(ys.shape[1]):
        ref_m, ref_ll = _joint_filtering(ssm.A, ssm.Q, H, Rfull, ys[:, b], m0[b], P0)
        torch.testing.assert_close(m[:, b], ref_m)
        torch.testing.assert_close(ll[b], ref_ll)
    # a fully observed batch keeps the shared covariances of before
    full = kalman_filter(ssm.A, ssm.Q, H, R, torch.nan_to_num(ys), m0, P0)
    assert full[1].shape == (4, 3, 3)
    with pytest.raises(ValueError, match="inf"):
        kalman_filter(ssm.A, ssm.Q, H, R, ys.nan_to_num(math.inf), m0, P0)


def test_bootstrap_pf_and_enkf_match_kalman_with_missing_values(lg):
    ssm, ys = lg
    B, N = ys.shape[1], 40_000  # the evidence's Monte Carlo sd is ~0.3 at N = 4000
    m, P, ll = ssm.kalman_filter(ys, init_loc=torch.zeros(B, 3, dtype=torch.float64))
    init = ssm.init_scale_tril
    # the particles' seed differs from the filters': one stream for both would make the first
    # transition noise equal to the initial draws
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, N, 3, dtype=torch.float64, generator=g) @ init.T
    pf = BootstrapPF(ssm, ssm.observation, N, seed=1, verbose=False).filter(ys, x0)
    enkf = EnKF(ssm, ssm.observation, N, seed=1, verbose=False).filter(ys, x0)
    for res in (pf, enkf):
        assert torch.isfinite(res.means).all()
        assert float((res.means - m).abs().max()) < 0.15
    # a missing component counted as observed would shift the evidence by ~1 (its -log 2 pi / 2)
    assert float((pf.log_evidence - ll).abs().max()) < 0.25


def test_enkf_gain_with_a_missing_component_is_the_observed_components_own(lg):
    """One EnKF step with y_2 missing, by hand from the same draws: forecast members,
    perturbed observations, then the gain from the ensemble covariances of the observed
    components alone, K = C_xo (C_oo + r^2 I)^-1; the missing component moves nothing."""
    ssm, _ = lg
    N, r = 50, ssm.observation.noise_scale
    x0 = torch.randn(2, N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([[0.4, -0.2, NAN], [1.0, NAN, 0.3]], dtype=torch.float64)
    f = EnKF(ssm, ssm.observation, N, seed=7, verbose=False)
    f.init(x0)
    f.step(y)
    g = torch.Generator().manual_seed(7)
    x = ssm.sample(x0, generator=g)
    hx = ssm.observation.mean(x)
    eps = r * torch.randn(hx.shape, generator=g, dtype=hx.dtype)
    for b in range(2):
        o = ~torch.isnan(y[b])
        Xa = x[b] - x[b].mean(0)
        Ya = (hx[b] - hx[b].mean(0))[:, o]
        gain = Xa.T @ Ya @ torch.linalg.inv(Ya.T @ Ya + (N - 1) * r**2 * torch.eye(int(o.sum())))
        want = x[b] + (y[b, o] + eps[b][:, o] - hx[b][:, o]) @ gain.T
        torch.testing.assert_close(f.particles[b], want)


def test_surge_propagates_unobserved_steps_and_conditions_on_observed_components():
    """On the linear-Gaussian surrogate with its exact score, a step with nothing observed
    leaves the weights as they were (uniform here) and moves the cloud to the predictive;
    with part of y observed the means match the Kalman filter on those components."""
    ssm = LinearGaussianSSM.random(dim=4, obs_every=1, obs_noise=0.25, generator=0)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    K = 30
    Ak, Qk = tr.effective_transition(K)
    _, ys = ssm.simulate(1, 4, generator=1)
    ys = ys.clone()
    ys[0, :2] = NAN  # nothing observed for trajectories 0 and 1
    ys[0, 2, :2] = NAN  # half observed for trajectory 2
    m0 = torch.zeros(4, 4, dtype=torch.float64)
    P0 = 0.25 * torch.eye(4, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x0 = 0.5 * torch.randn(4, 4000, 4, dtype=torch.float64, generator=g)
    f = SURGE(tr, ssm.observation, 4000, K, seed=0, verbose=False)
    res = f.filter(ys, particles=x0)
    lw = f.log_weights - torch.logsumexp(f.log_weights, -1, keepdim=True)
    assert torch.equal(lw[:2], torch.full_like(lw[:2], -math.log(4000)))  # weights untouched
    H, R = ssm.observation.H, ssm.observation.noise_scale**2
    m_ref, P_ref, _ = kalman_filter(Ak, Qk, H, R, ys, m0, P0)
    for b in range(4):
        Li = torch.linalg.inv(torch.linalg.cholesky(P_ref[0, b]))
        assert float(((res.means[0, b] - m_ref[0, b]) @ Li.T).norm()) < 0.3
