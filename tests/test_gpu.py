"""Device-agnostic heavy paths, run on the CPU everywhere and on CUDA where one exists.

Each test runs the same code on ``device`` and checks a real property (agreement with the CPU
result, or a closed form); the ``cuda`` cases carry the ``gpu`` marker and are skipped without
a GPU (tests/conftest.py). ``benchmarks/gpu_check.sh`` runs every ``gpu``-marked test (these and
the CUDA case of GRASP's constraint test in tests/inference/test_projection.py).
"""

import numpy as np
import pytest
import torch

from probml.inference.advantage import basis_advantages, grpo_advantages
from probml.inference.particles import effective_sample_size, resample
from probml.inference.smc import SURGE, kalman_filter
from probml.models.diffusion import LinearGaussianDiffusion
from probml.models.dynamics import LinearGaussianSSM
from probml.models.lm import TinyLM, TinyLMConfig

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kw", [{}, {"ffn": {"kind": "moa"}}, {"placement": "dnp", "branch_scales": True}]
)
def test_tinylm_matches_the_cpu_and_trains(device, kw):
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, context=32, **kw)
    cpu = TinyLM(cfg)
    dev = TinyLM(cfg).to(device)
    dev.load_state_dict(cpu.state_dict())
    x = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(1))
    ref, _ = cpu(x, x)
    out, loss = dev(x.to(device), x.to(device))
    assert out.device.type == device
    assert torch.allclose(out.cpu(), ref, atol=2e-3, rtol=1e-3)
    opt = torch.optim.AdamW(dev.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(20):
        _, loss = dev(x.to(device), x.roll(-1, 1).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


@pytest.mark.parametrize("device", DEVICES)
def test_particle_toolkit_on_device(device):
    g = torch.Generator(device=device).manual_seed(0)
    log_w = torch.randn(8, 1000, generator=g, device=device, dtype=torch.float64)
    ess = effective_sample_size(log_w)
    assert torch.allclose(ess.cpu(), effective_sample_size(log_w.cpu()))
    idx = resample(log_w, 1000, scheme="systematic", generator=g)
    assert idx.device.type == device and idx.shape == (8, 1000)
    # systematic resampling: each count is within one of N w_i
    w = torch.softmax(log_w, -1)
    counts = torch.zeros_like(w).scatter_add_(-1, idx, torch.ones_like(w))
    assert float((counts - 1000 * w).abs().max()) < 1.0 + 1e-9


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_surge_on_device_matches_the_kalman_posterior(device, missing):
    """With ``missing``, trajectory 0 sees nothing and trajectory 1 part of y (NaN): the
    observed-component masks run on the device too."""
    ssm = LinearGaussianSSM.random(dim=6, obs_every=2, obs_noise=0.25)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    xs, ys = ssm.simulate(1, 4, generator=1)
    if missing:
        ys = ys.clone()
        ys[0, 0] = float("nan")
        ys[0, 1, 0] = float("nan")
    m0, P0 = xs[0], 0.25 * torch.eye(6, dtype=torch.float64)
    Ak, Qk = tr.effective_transition(30)
    g = torch.Generator().manual_seed(0)
    parts = m0[:, None] + 0.5 * torch.randn(4, 4000, 6, dtype=torch.float64, generator=g)
    f = SURGE(tr.to(device), ssm.observation, 4000, 30, seed=0, verbose=False)
    res = f.filter(ys.to(device), particles=parts.to(device))
    H = ssm.observation.H
    for b in range(4):
        m, P, _ = kalman_filter(Ak, Qk, H, 0.25**2, ys[:, b], m0[b], P0)
        L = torch.linalg.cholesky(P[0])
        z = torch.linalg.solve_triangular(
            L, (res.means[0, b].cpu() - m[0]).unsqueeze(-1), upper=False
        )
        assert float(z.norm()) < 0.5  # Monte Carlo error ~ sqrt(d / ESS)


@pytest.mark.parametrize("device", DEVICES)
def test_advantages_agree_across_devices(device):
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(256, generator=g) < 0.4).double()
    p0 = torch.rand(256, generator=g, dtype=torch.float64) * 0.8 + 0.1
    a_cpu, diag_cpu = basis_advantages(r, p0)
    a_dev, diag_dev = basis_advantages(r.to(device), p0.to(device))
    assert a_dev.device.type == device
    assert torch.allclose(a_dev.cpu(), a_cpu, atol=1e-10)
    rg = (torch.rand(32, 8, generator=g) < 0.5).double()
    assert torch.allclose(grpo_advantages(rg.to(device)).cpu(), grpo_advantages(rg), atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_bayesian_baselines_agree_across_devices(device):
    from probml.models.rollouts import DriftFilter, PromptDriftFilter, bayesian_loo_baseline

    g = torch.Generator().manual_seed(1)
    p0 = torch.rand(3, 64, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = (torch.rand(3, 64, generator=g, dtype=torch.float64) < p0).double()
    b_cpu = bayesian_loo_baseline(r[0], p0[0])
    b_dev = bayesian_loo_baseline(r[0].to(device), p0[0].to(device))
    assert b_dev.device.type == device and torch.allclose(b_dev.cpu(), b_cpu, atol=1e-10)
    f_cpu, f_dev = DriftFilter(), DriftFilter().to(device)
    for t in range(3):
        x, y = (
            f_cpu.loo_baseline(r[t], p0[t]),
            f_dev.loo_baseline(r[t].to(device), p0[t].to(device)),
        )
        assert y.device.type == device and torch.allclose(y.cpu(), x, atol=1e-10)
    e_cpu, e_dev = PromptDriftFilter(80), PromptDriftFilter(80).to(device)
    idx = torch.randperm(80, generator=g)[:64]
    for t in range(3):
        x = e_cpu.loo_baseline(r[t], p0[t], idx)
        y = e_dev.loo_baseline(r[t].to(device), p0[t].to(device), idx.to(device))
        assert y.device.type == device and torch.allclose(y.cpu(), x, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_drum_fits_on_device(device):
    """DRUM on device tensors, bias correction included (it hands folds to scikit-learn):
    the fitted-nuisance minimax reaches the binary closed form f* = 0.3646, and a numpy
    ``X`` at prediction time is moved to the fit's device."""
    from probml.inference.minimax import DRUM
    from probml.models.transfer import BinaryShiftProblem

    Xs, As, ys, Xt = BinaryShiftProblem().sample(5000, 3)
    est = DRUM(
        rho=0.1,
        predictor="constant",
        outcome_model="linear",
        num_iters=300,
        bias_correction=True,
        verbose=False,
    )
    est.fit(Xs.to(device), As.to(device), ys.to(device), Xt.to(device))
    assert est.device_.type == device and est.correction_.device.type == device
    p = est.predict_proba(Xt[:4].cpu().numpy())[:, 1]
    assert np.isfinite(p).all() and np.abs(p - 0.3646).max() < 0.03, p


@pytest.mark.parametrize("device", DEVICES)
def test_spurious_factor_and_scale_priors_on_device(device):
    """GRASP's spurious-factor fit and the scale-vector priors on device tensors: the planted
    shared direction is found and the soft projector lives beside the updates; the Pyro
    view of a device model draws its scales there."""
    import pyro
    from pyro import poutine

    from probml.models.adapters import fit_spurious_factor
    from probml.models.layers import scale_vector_priors

    g = torch.Generator().manual_seed(0)
    u = torch.randn(12, generator=g)
    u = u / u.norm()
    b = (2.0 + torch.rand(16, generator=g))[:, None] * u + 0.05 * torch.randn(16, 12, generator=g)
    out = fit_spurious_factor(b.to(device), num_task=2, num_steps=300, seed=0)
    assert out["projector"].device.type == device and out["u"].device.type == device
    assert abs(float(out["u"].cpu() @ u)) > 0.9
    pyro.clear_param_store()
    cfg = TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, context=8)
    m = scale_vector_priors(TinyLM(cfg).to(device), weight_decay=0.5)
    x = torch.randint(0, 11, (2, 8), device=device)
    tr = poutine.trace(lambda: m(x)).get_trace()
    assert tr.nodes["norm_f.scale.alpha"]["value"].device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_persona_experiment_runs_on_device(device, tmp_path, monkeypatch):
    """GRASP's persona experiment where the base model lives: pretraining on ``device``, then
    identification, the residual shift and GRASP fine-tuning. Before, the identification
    cosines met ``u_true`` (kept on the CPU) with CUDA directions and failed."""
    from probml.datasets.persona import PersonaWorld
    from probml.inference.persona_experiment import pretrain_persona_model, run_persona_methods

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()
    base = pretrain_persona_model(w, num_steps=5, d_model=16, verbose=False, device=device)
    assert next(base.parameters()).device.type == device
    methods = ("naive", "GRASP", "GRASP (residual shift)", "GRASP (oracle u)")
    rows, diag = run_persona_methods(base, w, num_steps=3, id_steps=2, shift_docs=50,
                                     methods=methods)  # fmt: skip
    assert [r["method"] for r in rows][-1] == "GRASP (oracle u)"
    cos = list(diag["identification_cos_per_module"].values())
    assert cos and all(0.0 <= c <= 1.0 + 1e-6 for c in cos)
    # a model trained on an accelerator has its own cache entry; the CPU entry is unchanged
    again = pretrain_persona_model(w, num_steps=5, d_model=16, verbose=False)
    assert len(list(tmp_path.glob("persona_*.pt"))) == (1 if device == "cpu" else 2)
    assert next(again.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_fit_shallow_net_on_device_matches_the_cpu(device):
    """The network lives on X's device (it stayed on the CPU) with the CPU's restarts."""
    from probml.inference.expressivity import fit_shallow_net

    x = torch.linspace(-2, 2, 401, dtype=torch.float64)[:, None]
    y = torch.relu(x[:, 0]) + torch.relu(x[:, 0]) ** 2
    mse, net = fit_shallow_net("la", ("relu", "relu2"), x.to(device), y.to(device), restarts=12)
    assert all(p.device.type == device for p in net.parameters())
    assert mse < 1e-12  # an exact representation, fitted to rounding on every device
