import pytest
import torch

from probml.inference.expressivity import fit_shallow_net
from probml.models.layers import (
    GELUFFN,
    LearnableActivationFFN,
    MixtureOfActivationsFFN,
    Norm,
    ScaledLinear,
    ScaleVector,
    ShallowNet,
    SwiGLUFFN,
    ffn_factory,
)


def test_la_width_one_represents_relu_plus_relu2_exactly():
    x = torch.linspace(-2, 2, 401, dtype=torch.float64)[:, None]
    y = torch.relu(x[:, 0]) + torch.relu(x[:, 0]) ** 2
    # exact representation: fitted to float64 rounding (3.5e-18 measured; an L-BFGS stopped
    # at a gradient tolerance of 1e-5 instead of 1e-14 leaves about 1e-12)
    assert fit_shallow_net("la", ("relu", "relu2"), x, y, restarts=12)[0] < 1e-13


def test_moa_width_one_fits_a_gated_product_that_la_cannot():
    g = torch.linspace(-2, 2, 41, dtype=torch.float64)
    X = torch.cartesian_prod(g, g)
    y = torch.sigmoid(3 * X[:, 0]) * torch.relu(X[:, 1])
    # the gate sigmoid(3 x_0) times relu(x_1) is one width-1 MoA unit: fitted to rounding
    # (4.7e-17 measured)
    assert fit_shallow_net("moa", ("relu",), X, y, restarts=12)[0] < 1e-13
    with pytest.raises(ValueError, match=r"y of shape \(n,\)"):  # n x 1 would broadcast
        fit_shallow_net("moa", ("relu",), X, y[:, None], restarts=1)
    assert fit_shallow_net("la", ("relu",), X, y, restarts=12)[0] > 1e-3


def test_fit_shallow_net_refuses_nan_data_and_reports_when_every_restart_overflows():
    """A NaN target made every restart's error NaN and ``(inf, None)`` came back; so did
    data so large that every fit overflows. Both are now errors."""
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    y = x[:, 0].clone()
    y[3] = float("nan")
    with pytest.raises(ValueError, match="y must be finite"):
        fit_shallow_net("fixed", ("relu",), x, y, restarts=1, max_iter=2)
    with pytest.raises(ValueError, match="X must be finite"):
        fit_shallow_net("fixed", ("relu",), x / 0, x[:, 0], restarts=1, max_iter=2)
    with pytest.raises(ValueError, match="restarts must be >= 1"):  # not "no restart of 0"
        fit_shallow_net("fixed", ("relu",), x, x[:, 0], restarts=0)
    big = torch.full((4, 1), 1e300, dtype=torch.float64)  # relu(w x)^2 overflows to inf
    with pytest.raises(RuntimeError, match="no restart of 2 reached a finite error"):
        fit_shallow_net("la", ("relu2",), big, torch.zeros(4, dtype=torch.float64), restarts=2)


@pytest.mark.parametrize(
    "ffn_type, variant", [("I", "bi_sided"), ("II", "one_sided"), ("II", "bi_sided")]
)
def test_moa_equals_la_at_initialisation(ffn_type, variant):
    torch.manual_seed(0)
    la = LearnableActivationFFN(16, 32, ffn_type, variant)
    moa = MixtureOfActivationsFFN(16, 32, ffn_type, variant)
    shared = {k: v for k, v in la.state_dict().items() if k.startswith("w")}
    moa.load_state_dict(shared, strict=False)  # same projections
    x = torch.randn(3, 5, 16)
    assert torch.allclose(moa(x), la(x), atol=1e-6)
    literal = MixtureOfActivationsFFN(16, 32, ffn_type, variant, gate="literal")
    literal.load_state_dict(shared, strict=False)
    assert not torch.allclose(literal(x), la(x))  # the bias-free gate holds 1/2, not alpha


@pytest.mark.parametrize("kind", ["swiglu", "gelu", "la", "moa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ffn_shapes_dtype_and_checkpointing(kind, dtype):
    ffn = ffn_factory(kind)(8, 24).to(dtype)
    x = torch.randn(2, 7, 8, dtype=dtype, requires_grad=True)
    y = ffn(x)
    assert y.shape == x.shape and y.dtype == dtype
    if kind in ("la", "moa"):
        ck = ffn_factory(kind, checkpointing=True)(8, 24).to(dtype)
        ck.load_state_dict(ffn.state_dict())
        y2 = ck(x)
        g1 = torch.autograd.grad(y.sum(), x)[0]
        g2 = torch.autograd.grad(y2.sum(), x)[0]
        assert torch.allclose(y, y2) and torch.allclose(g1, g2)
    with pytest.raises(ValueError):
        ffn_factory("nope")


def test_bad_dictionary_and_options():
    with pytest.raises(ValueError, match="unknown activations"):
        LearnableActivationFFN(4, 8, dictionary=("relu", "swish9"))
    with pytest.raises(ValueError, match="role"):
        ScaleVector(4, role="middle")
    with pytest.raises(ValueError, match="placement"):
        ScaledLinear(4, 4, placement="both")
    # an empty dictionary would make an FFN whose hidden layer is 0 for every input
    for cls in (LearnableActivationFFN, MixtureOfActivationsFFN):
        with pytest.raises(ValueError, match="dictionary must not be empty"):
            cls(4, 8, dictionary=())
        with pytest.raises(ValueError, match="ffn_type must be 'I' or 'II'"):
            cls(4, 8, ffn_type="III")
    with pytest.raises(ValueError, match="reparam must be None or 'magnitude_direction'"):
        ScaleVector(4, reparam="magnitude")  # else a plain scale, silently
    with pytest.raises(ValueError, match="kind must be 'rms' or 'layer'"):
        Norm(4, kind="batch")  # else a LayerNorm, silently
    with pytest.raises(ValueError, match="exactly one activation"):
        ShallowNet(2, 3, kind="fixed", dictionary=("relu", "tanh"))  # else relu alone
    # the variant is Type II's: a Type I layer named "quadratic" mixes its one branch with one
    # coefficient per activation, sum_k alpha_k sigma_k(W_1 x)
    torch.manual_seed(0)
    la = LearnableActivationFFN(
        4, 8, ffn_type="I", variant="quadratic", dictionary=("relu", "tanh")
    )
    x = torch.randn(3, 4)
    with torch.no_grad():
        la.alpha.copy_(torch.tensor([0.5, 2.0]))
        want = la.w3(0.5 * torch.relu(la.w1(x)) + 2.0 * torch.tanh(la.w1(x)))
        assert la.alpha.shape == (2,) and la.w2 is None
        assert torch.allclose(la(x), want, atol=1e-6)


def test_prenorm_scale_is_absorbable_into_the_next_linear():
    torch.manual_seed(0)
    norm = Norm(6, "rms", scale=True)
    with torch.no_grad():
        norm.scale.alpha.copy_(torch.rand(6) + 0.5)
    lin = torch.nn.Linear(6, 3, bias=False)
    folded = torch.nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        folded.weight.copy_(lin.weight * norm.scale.gamma)  # W diag(gamma)
    bare = Norm(6, "rms", scale=False)
    x = torch.randn(10, 6)
    assert torch.allclose(lin(norm(x)), folded(bare(x)), atol=1e-6)


def test_magnitude_direction_represents_the_same_function():
    plain = ScaleVector(5)
    md = ScaleVector(5, reparam="magnitude_direction")
    gamma = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.1])
    with torch.no_grad():
        plain.alpha.copy_(gamma)
        md.beta.fill_(2.0)
        md.alpha.copy_(gamma / 2.0)
    x = torch.randn(4, 5)
    assert torch.allclose(plain(x), md(x))


def test_gradient_flow_conserves_gamma_squared_minus_column_norm():
    # y = W diag(gamma) xhat: under gradient flow d/dt gamma_j^2 = d/dt ||w_j||^2
    torch.manual_seed(0)
    X = torch.randn(64, 4, dtype=torch.float64)
    Y = X @ torch.randn(4, 3, dtype=torch.float64) * 2.0
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    gamma = torch.ones(4, dtype=torch.float64, requires_grad=True)
    inv0 = (gamma**2 - (W**2).sum(0)).detach()
    lr = 1e-4
    g0 = gamma.detach().clone()
    for _ in range(3000):
        loss = ((X * gamma) @ W.T - Y).pow(2).mean()
        gW, gg = torch.autograd.grad(loss, (W, gamma))
        with torch.no_grad():
            W -= lr * gW
            gamma -= lr * gg
    inv = (gamma**2 - (W**2).sum(0)).detach()
    moved = (gamma.detach() ** 2 - g0**2).abs()
    assert moved.max() > 0.05  # gamma really moved
    assert (inv - inv0).abs().max() < 0.02 * moved.max()  # invariant up to O(lr) drift


def test_scale_vector_priors_make_map_equal_to_role_aware_decay():
    import pyro
    from pyro import poutine

    from probml.models.layers import scale_vector_priors
    from probml.models.lm import TinyLM, TinyLMConfig

    pyro.clear_param_store()
    m = TinyLM(
        TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, context=8, qk_norm=True)
    )
    scale_vector_priors(m, weight_decay=0.5)
    x = torch.randint(0, 11, (2, 8))
    tr = poutine.trace(lambda: m(x)).get_trace()
    sites = {n for n, s in tr.nodes.items() if s["type"] == "sample"}
    # Input-Norm scales are latent (Gaussian prior); QK-norm (Output-Norm) scales are not
    assert "norm_f.scale.alpha" in sites and "blocks.0.norm1.scale.alpha" in sites
    assert not any("q_norm" in s or "k_norm" in s for s in sites)
    site = tr.nodes["norm_f.scale.alpha"]
    g = site["value"]
    expected = -0.5 * 0.5 * (g**2).sum()  # -(lambda/2)||gamma||^2 up to a constant
    const = site["fn"].log_prob(torch.zeros_like(g))
    assert torch.allclose(site["fn"].log_prob(g) - const, expected, atol=1e-5)
    with pytest.raises(ValueError, match="weight_decay"):
        scale_vector_priors(m, 0.0)
    # a model with no Input-Norm scale: before, a view with no latent site came back silently
    bare = TinyLM(TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, norm_scale=False))
    with pytest.raises(ValueError, match="no Input-Norm scale"):
        scale_vector_priors(bare, 0.5)


@pytest.mark.parametrize("to", [torch.float64, "meta"])
def test_scale_vector_priors_follow_the_models_dtype_and_device(to):
    """The priors are built beside the scales: a float64 model draws float64 scales (before:
    float32), and a model on another device draws there (``meta`` stands in for CUDA here;
    before, the CPU prior met the model's tensors in the forward pass and failed)."""
    import pyro
    from pyro import poutine

    from probml.models.layers import scale_vector_priors
    from probml.models.lm import TinyLM, TinyLMConfig

    pyro.clear_param_store()
    m = TinyLM(TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, context=8)).to(to)
    device = torch.device("meta") if to == "meta" else torch.device("cpu")
    x = torch.randint(0, 11, (2, 8)).to(device)
    with pyro.validation_enabled(to != "meta"):  # argument checks read values: none on meta
        scale_vector_priors(m, weight_decay=0.5)
        tr = poutine.trace(lambda: m(x)).get_trace()
    value = tr.nodes["norm_f.scale.alpha"]["value"]
    assert value.device == device
    assert value.dtype == (torch.float64 if to == torch.float64 else torch.float32)
    # moved after the call: the priors (buffers of the scale modules) move with the model
    if to == torch.float64:
        pyro.clear_param_store()
        m = TinyLM(TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, context=8))
        scale_vector_priors(m, weight_decay=0.5).to(to)
        assert "norm_f.scale.alpha_prior_loc" not in m.state_dict()  # not saved with the model
        tr = poutine.trace(lambda: m(x)).get_trace()
        assert tr.nodes["norm_f.scale.alpha"]["value"].dtype == torch.float64
    pyro.clear_param_store()


def test_stochastic_gates_mean_field_is_the_moa_layer_and_svi_runs():
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    from probml.models.layers import StochasticGates

    torch.manual_seed(0)
    layer = MixtureOfActivationsFFN(6, 12, "II", "bi_sided", dictionary=("relu", "tanh"))
    with torch.no_grad():
        layer.gate_proj.weight.normal_(std=0.5)
        layer.gate_proj.bias.normal_(std=0.5)
    x = torch.randn(4, 6)
    sg = StochasticGates(layer)
    mc = sg.mean_output(x, num_samples=20000)
    assert torch.allclose(mc, layer(x), atol=0.02 * layer(x).abs().max().item() + 1e-3)
    # a generator makes the estimate reproducible without touching the global RNG
    state = torch.get_rng_state()
    a = sg.mean_output(x, 64, generator=torch.Generator().manual_seed(3))
    b = sg.mean_output(x, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    for bad in (0, 2.5):
        with pytest.raises((ValueError, TypeError), match="num_samples"):
            sg.mean_output(x, bad)
    pyro.clear_param_store()
    svi = SVI(sg.model, sg.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    y = torch.randn(4, 6)
    losses = [svi.step(x, y) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ValueError, match="gated"):
        StochasticGates(MixtureOfActivationsFFN(6, 12, gate="literal"))
    for kw, name in (({"noise": 0.0}, "noise"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=name):
            StochasticGates(layer, **kw)
    # the guide's relaxation runs at the given temperature, its probabilities are q(x)
    pyro.clear_param_store()
    guide = pyro.poutine.trace(StochasticGates(layer, temperature=0.3).guide).get_trace(x)
    relaxed = guide.nodes["z"]["fn"].base_dist
    assert float(relaxed.temperature) == pytest.approx(0.3)
    assert torch.allclose(relaxed.probs, torch.sigmoid(layer.gate_proj(x)))


@pytest.mark.parametrize("ffn_type, variant", [("I", "bi_sided"), ("II", "one_sided")])
def test_stochastic_gates_of_every_ffn_form_have_the_layer_as_their_mean(ffn_type, variant):
    """Only the Type II bi-sided layer was tested. For Type I and one-sided layers (one gate
    set) the output is linear in z, so the gate means q(x) reproduce ``layer(x)`` exactly; the
    Monte Carlo mean of hard gate draws agrees, and the Pyro model's sites have the layer's
    gate count."""
    import pyro
    from pyro import poutine

    from probml.models.layers import StochasticGates

    torch.manual_seed(1)
    layer = MixtureOfActivationsFFN(6, 12, ffn_type, variant, dictionary=("relu", "tanh"))
    with torch.no_grad():
        layer.gate_proj.weight.normal_(std=0.5)
        layer.gate_proj.bias.normal_(std=0.5)
    x = torch.randn(5, 6)
    sg = StochasticGates(layer, name=f"moa_{ffn_type}_{variant}")
    q = torch.sigmoid(layer.gate_proj(x))
    assert q.shape == (5, layer.K)  # one gate set
    assert torch.allclose(sg._output(x, q), layer(x), atol=1e-6)
    mc = sg.mean_output(x, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mc, layer(x), atol=0.02 * layer(x).abs().max().item() + 1e-3)
    pyro.clear_param_store()
    tr = poutine.trace(sg.model).get_trace(x, torch.randn(5, 6))
    assert tr.nodes["z"]["value"].shape == (5, layer.K)
    pyro.clear_param_store()


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the activation registry, restored after the test."""
    from probml.models import layers

    monkeypatch.setattr(layers, "ACTIVATIONS", dict(layers.ACTIVATIONS))
    return layers


def test_registered_activation_is_used_by_la_moa_and_tinylm(registry, tmp_path):
    from probml.models.lm import TinyLM, TinyLMConfig

    registry.register_activation("test_softplus", torch.nn.functional.softplus)
    # known answer: a width-1 LA over {relu, softplus} represents relu + 0.5 softplus exactly
    x = torch.linspace(-2, 2, 201, dtype=torch.float64)[:, None]
    y = torch.relu(x[:, 0]) + 0.5 * torch.nn.functional.softplus(x[:, 0])
    assert fit_shallow_net("la", ("relu", "test_softplus"), x, y, restarts=4)[0] < 1e-13
    assert fit_shallow_net("la", ("relu",), x, y, restarts=4)[0] > 1e-3
    # the MoA layer at init (gates 1) is the sum of the dictionary's activations
    layer = MixtureOfActivationsFFN(5, 7, "I", dictionary=("test_softplus",))
    h = torch.randn(3, 5)
    with torch.no_grad():
        expected = layer.w3(torch.nn.functional.softplus(layer.w1(h)))
        assert torch.allclose(layer(h), expected, atol=1e-6)
    # a TinyLM naming it saves and loads (the config holds the name)
    ffn = {"kind": "moa", "dictionary": ("relu", "test_softplus")}
    lm = TinyLM(TinyLMConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, context=8, ffn=ffn))
    lm.save(tmp_path / "lm.pt")
    tok = torch.randint(0, 11, (2, 8))
    assert torch.equal(TinyLM.load(tmp_path / "lm.pt")(tok), lm(tok))


def test_register_activation_rejects_bad_input(registry):
    with pytest.raises(ValueError, match="built-in"):
        registry.register_activation("relu", torch.sigmoid)
    with pytest.raises(ValueError, match="name"):
        registry.register_activation("", torch.sigmoid)
    with pytest.raises(TypeError, match="fn must be callable"):
        registry.register_activation("x", 3.0)
    with pytest.raises(ValueError, match="elementwise"):
        registry.register_activation("x", lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="elementwise"):
        registry.register_activation("x", lambda z: z.double())
    with pytest.raises(ValueError, match="finite"):
        registry.register_activation("x", torch.log)
    assert "x" not in registry.ACTIVATIONS  # nothing half-registered
    registry.register_activation("x", torch.sin)
    with pytest.raises(ValueError, match="overwrite=True"):
        registry.register_activation("x", torch.cos)
    registry.register_activation("x", torch.cos, overwrite=True)
    assert registry.ACTIVATIONS["x"] is torch.cos
    with pytest.raises(ValueError, match="register_activation"):
        LearnableActivationFFN(4, 8, dictionary=("relu", "not_registered"))


class _ReluSquaredFFN(torch.nn.Module):
    """A user FFN: W_2 relu(W_1 x)^2 (the factory contract: d_model, d_ff, down=None)."""

    def __init__(self, d_model, d_ff, down=None, bias=False):
        super().__init__()
        self.up = torch.nn.Linear(d_model, d_ff, bias=bias)
        self.down = down if down is not None else torch.nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)) ** 2)


def test_a_registered_ffn_builds_trains_saves_and_takes_the_placement(monkeypatch, tmp_path):
    from probml.models import layers
    from probml.models.lm import TinyLM, TinyLMConfig

    monkeypatch.setattr(layers, "FFN_KINDS", dict(layers.FFN_KINDS))
    layers.register_ffn("relu2", _ReluSquaredFFN)
    cfg = dict(vocab_size=11, d_model=16, n_heads=2, n_layers=2, context=8)
    lm = TinyLM(TinyLMConfig(**cfg, ffn={"kind": "relu2", "bias": True}))
    assert all(isinstance(b.ffn, _ReluSquaredFFN) and b.ffn.up.bias is not None for b in lm.blocks)
    # TinyLM's initialisation reaches the registered FFN: biases zero, weights N(0, 0.02^2)
    assert all(bool((b.ffn.up.bias == 0).all()) for b in lm.blocks)
    w = torch.cat([b.ffn.up.weight.detach().flatten() for b in lm.blocks])
    assert 0.015 < float(w.std()) < 0.025
    tok = torch.randint(0, 11, (3, 8))
    loss = torch.nn.functional.cross_entropy(lm(tok).flatten(0, 1), tok.flatten())
    loss.backward()
    assert all(b.ffn.up.weight.grad is not None for b in lm.blocks)
    lm.save(tmp_path / "lm.pt")
    assert torch.equal(TinyLM.load(tmp_path / "lm.pt")(tok), lm(tok))
    # DP placement hands the factory its scaled down projection
    dp = TinyLM(TinyLMConfig(**cfg, placement="dp", ffn={"kind": "relu2"}))
    assert isinstance(dp.blocks[0].ffn.down, layers.ScaledLinear)
    assert layers.ffn_factory("relu2")(16, 32)(torch.zeros(2, 16)).shape == (2, 16)


def test_register_ffn_rejects_bad_input(monkeypatch):
    from probml.models import layers
    from probml.models.lm import TinyLM, TinyLMConfig

    monkeypatch.setattr(layers, "FFN_KINDS", dict(layers.FFN_KINDS))
    with pytest.raises(ValueError, match="built-in"):
        layers.register_ffn("swiglu", _ReluSquaredFFN)
    with pytest.raises(TypeError, match="factory must be callable"):
        layers.register_ffn("x", 3)
    with pytest.raises(TypeError, match="nn.Module"):
        layers.register_ffn("x", lambda d, f, down=None: torch.zeros(d))
    with pytest.raises(ValueError, match=r"must map \.\.\. x 8 to \.\.\. x 8"):
        layers.register_ffn("x", lambda d, f, down=None: torch.nn.Linear(d, f))
    assert "x" not in layers.FFN_KINDS
    layers.register_ffn("x", _ReluSquaredFFN)
    with pytest.raises(ValueError, match="overwrite=True"):
        layers.register_ffn("x", _ReluSquaredFFN)
    with pytest.raises(ValueError, match="register_ffn"):
        TinyLM(TinyLMConfig(vocab_size=11, d_model=16, n_heads=2, ffn={"kind": "nope"}))


def test_stochastic_gates_second_layer_trains_or_refuses_the_shared_store_name():
    """Pyro keys its parameter store by name: a second gated layer fitted under the first
    one's name would step the first layer's tensors and leave its own unchanged. That raises;
    under its own name the second layer trains."""
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    from probml.models.layers import StochasticGates

    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randn(16, 6)

    def fit(sg, steps=3):
        svi = SVI(sg.model, sg.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(steps):
            svi.step(x, y)

    pyro.clear_param_store()
    first = StochasticGates(MixtureOfActivationsFFN(6, 12, "II", dictionary=("relu", "tanh")))
    fit(first)
    second_layer = MixtureOfActivationsFFN(6, 12, "II", dictionary=("relu", "tanh"))
    with pytest.raises(ValueError, match="name"):
        fit(StochasticGates(second_layer))
    before = second_layer.w1.weight.detach().clone()
    fit(StochasticGates(second_layer, name="second"))
    assert not torch.equal(second_layer.w1.weight, before)
    fit(first)  # the first layer's own entries are still its tensors
    with pytest.raises(TypeError, match="name"):
        StochasticGates(second_layer, name="")
    pyro.clear_param_store()


def test_scale_vector_priors_refuse_a_store_holding_another_models_tensors():
    """Every converted TinyLM names its parameters by module path. Fitted one after another in
    one parameter store, SVI on the second stepped the first model's tensors and left the
    second's unchanged; converting the second now raises, and after clearing the store it
    trains."""
    import pyro
    import torch.nn.functional as F
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoDelta

    from probml.models.layers import scale_vector_priors
    from probml.models.lm import TinyLM, TinyLMConfig

    cfg = TinyLMConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, context=8)
    ids = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(0))

    def fit(m):
        def model():
            logits = m(ids[:, :-1])
            pyro.factor("lm", -32 * F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))

        svi = SVI(model, AutoDelta(model), pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(3):
            svi.step()

    pyro.clear_param_store()
    fit(scale_vector_priors(TinyLM(cfg), weight_decay=0.5))
    second = TinyLM(cfg)
    with pytest.raises(ValueError, match="clear_param_store"):
        scale_vector_priors(second, weight_decay=0.5)
    pyro.clear_param_store()
    before = second.tok.weight.detach().clone()
    fit(scale_vector_priors(second, weight_decay=0.5))
    assert not torch.equal(second.tok.weight, before)
    pyro.clear_param_store()


def test_scaled_linear_placements_compute_their_documented_formulas():
    """dp: gamma_out * W (gamma_in * x); dnp: gamma_out * Norm(W (gamma_in * Norm(x))). At
    initialisation every gamma is 1, so the scales need values of their own to be seen."""
    from probml.models.layers import ScaledLinear

    torch.manual_seed(0)
    x = torch.randn(4, 6)
    g_in, g_out = torch.rand(6) + 0.5, torch.rand(3) + 0.5
    rms = lambda t: t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # noqa: E731
    for placement in ("dp", "dnp"):
        lin = ScaledLinear(6, 3, placement=placement)
        scales = (lin.pre, lin.post) if placement == "dp" else (lin.pre.scale, lin.post.scale)
        with torch.no_grad():
            scales[0].alpha.copy_(g_in)
            scales[1].alpha.copy_(g_out)
        W = lin.linear.weight
        want = g_out * ((g_in * x) @ W.T)
        if placement == "dnp":
            want = g_out * rms((g_in * rms(x)) @ W.T)
        assert torch.allclose(lin(x), want, atol=1e-5), placement
        # the scale before W is an Input scale (decayed under the role rule), the one after
        # it an Output scale
        assert (scales[0].role, scales[1].role) == ("input", "output"), placement


def _act(name, z):
    """The dictionary's activations written out (leaky slope 0.01; GELU with erf)."""
    return {
        "relu": torch.clamp(z, min=0),
        "tanh": torch.tanh(z),
        "leaky_relu": torch.where(z > 0, z, 0.01 * z),
        "relu2": torch.clamp(z, min=0) ** 2,
        "gelu": 0.5 * z * (1 + torch.erf(z / 2**0.5)),
        "silu": z / (1 + torch.exp(-z)),
    }[name]


def _randomise(module):
    """Every parameter drawn away from its initial value (all-ones alphas, zero gates)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("gate", ["gated", "literal"])
def test_every_ffn_form_computes_its_documented_formula(gate):
    """LA, MoA (both gates), SwiGLU with branch scales and GELU against their formulas with
    random parameters. At initialisation the alphas are all 1 and the gates constant, where a
    form that reads the wrong coefficient (alpha for alpha2, alpha^T for alpha, a shared gate
    or scale) computes the same numbers."""
    torch.manual_seed(0)
    dic = ("relu", "tanh", "leaky_relu", "relu2")
    x = torch.randn(3, 5, 6, dtype=torch.float64)

    def mix(z, coef):  # sum_k coef_k sigma_k(z); coef is K or ... x K
        return sum(coef[..., k : k + 1] * _act(a, z) for k, a in enumerate(dic))

    for ffn_type, variant in [("I", "one_sided"), ("II", "one_sided"), ("II", "bi_sided")]:
        moa = _randomise(MixtureOfActivationsFFN(6, 8, ffn_type, variant, dic, gate=gate).double())
        logits = x @ moa.gate_proj.weight.T
        if gate == "gated":
            pi = moa.alpha * 2 * torch.sigmoid(logits + moa.gate_proj.bias)
        else:
            pi = torch.sigmoid(logits)
        h = mix(x @ moa.w1.weight.T, pi[..., :4])
        if ffn_type == "II":
            z2 = x @ moa.w2.weight.T
            h = h * (mix(z2, pi[..., 4:]) if variant == "bi_sided" else z2)
        assert torch.allclose(moa(x), h @ moa.w3.weight.T, atol=1e-10), (ffn_type, variant)
    if gate == "literal":
        return  # the gate is MoA's alone: the forms below run once
    for ffn_type, variant in [("I", "one_sided"), ("II", "one_sided"), ("II", "bi_sided")]:
        la = _randomise(LearnableActivationFFN(6, 8, ffn_type, variant, dic).double())
        h = mix(x @ la.w1.weight.T, la.alpha)
        if ffn_type == "II":
            z2 = x @ la.w2.weight.T
            h = h * (mix(z2, la.alpha2) if variant == "bi_sided" else z2)
        assert torch.allclose(la(x), h @ la.w3.weight.T, atol=1e-10), (ffn_type, variant)
    quad = _randomise(LearnableActivationFFN(6, 8, "II", "quadratic", dic).double())
    a1 = [_act(a, x @ quad.w1.weight.T) for a in dic]
    a2 = [_act(a, x @ quad.w2.weight.T) for a in dic]
    h = sum(quad.alpha[k, l] * a1[k] * a2[l] for k in range(4) for l in range(4))
    assert torch.allclose(quad(x), h @ quad.w3.weight.T, atol=1e-10)

    swiglu = _randomise(SwiGLUFFN(6, 8, branch_scales=True).double())
    gated = _act("silu", (x * swiglu.gate_scale.gamma) @ swiglu.gate.weight.T)
    want = (gated * ((x * swiglu.up_scale.gamma) @ swiglu.up.weight.T)) @ swiglu.down.weight.T
    assert torch.allclose(swiglu(x), want, atol=1e-10)
    gelu = _randomise(GELUFFN(6, 8).double())
    want = _act("gelu", x @ gelu.up.weight.T) @ gelu.down.weight.T
    assert torch.allclose(gelu(x), want, atol=1e-10)


def test_norms_and_the_shallow_moa_net_compute_their_documented_formulas():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64)
    for kind in ("rms", "layer"):
        norm = _randomise(Norm(6, kind, reparam="magnitude_direction").double())
        centred = x - x.mean(-1, keepdim=True) if kind == "layer" else x
        want = centred / centred.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        want = want * norm.scale.beta * norm.scale.alpha
        assert torch.allclose(norm(x), want, atol=1e-10), kind
    dic = ("relu", "tanh")
    net = _randomise(ShallowNet(6, 5, "moa", dic).double())
    z = net.l1(x)
    pi = net.alpha * 2 * torch.sigmoid(net.gate(x))
    h = sum(pi[:, k : k + 1] * _act(a, z) for k, a in enumerate(dic))
    assert torch.allclose(net(x), net.l2(h).squeeze(-1), atol=1e-10)


def test_scale_vector_priors_put_a_prior_on_the_magnitude_too():
    """Under ``scale_reparam="magnitude_direction"`` an Input-Norm scale is beta * alpha: both
    factors are latent with the N(0, 1/lambda) prior (a plain beta would escape the decay)."""
    import pyro
    from pyro import poutine

    from probml.models.layers import scale_vector_priors
    from probml.models.lm import TinyLM, TinyLMConfig

    pyro.clear_param_store()
    cfg = TinyLMConfig(
        vocab_size=11, d_model=8, n_layers=1, n_heads=2, scale_reparam="magnitude_direction"
    )
    m = scale_vector_priors(TinyLM(cfg), weight_decay=4.0)
    tr = poutine.trace(lambda: m(torch.randint(0, 11, (2, 8)))).get_trace()
    beta = tr.nodes["norm_f.scale.beta"]
    assert beta["type"] == "sample" and "norm_f.scale.alpha" in tr.nodes
    assert float(beta["fn"].scale) == pytest.approx(0.5)  # 1 / sqrt(lambda)
    pyro.clear_param_store()


def test_fit_shallow_net_restarts_from_standard_normals_with_gates_at_zero(monkeypatch):
    """The documented restart law, seen with the optimiser switched off: every weight
    N(0, 1) (not torch's default init, whose sd is 1/sqrt(3 fan_in)), MoA gates at their zero
    init; the best restart's error is the one returned."""

    class NoStep:
        def __init__(self, params, **kwargs):
            pass

        def zero_grad(self):
            pass

        def step(self, closure):
            return closure()

    monkeypatch.setattr(torch.optim, "LBFGS", NoStep)
    X = torch.randn(50, 3, dtype=torch.float64)
    y = X[:, 0]
    mse, net = fit_shallow_net("moa", ("relu", "tanh"), X, y, width=400, restarts=3)
    params = dict(net.named_parameters())
    assert bool((params["gate.weight"] == 0).all()) and bool((params["gate.bias"] == 0).all())
    w = torch.cat([params["l1.weight"].flatten(), params["l2.weight"].flatten()]).detach()
    assert float(w.std()) == pytest.approx(1.0, abs=0.05)
    with torch.no_grad():
        assert mse == pytest.approx(float(((net(X) - y) ** 2).mean()))


def test_parameters_follow_the_documented_forms():
    """LA: a second coefficient vector only for the Type II bi-sided form (the one-sided form
    mixes the W_1 branch alone); the literal MoA gate of the shallow net is bias-free, so at
    initialisation every gate is sigmoid(0) = 1/2; the stochastic gates' prior is
    Bernoulli(1/2), the guide's gate means at initialisation."""
    import pyro
    from pyro import poutine

    from probml.models.layers import StochasticGates

    keys = {
        (t, v): set(dict(LearnableActivationFFN(4, 8, t, v).named_parameters()))
        for t, v in (
            ("I", "bi_sided"),
            ("II", "one_sided"),
            ("II", "bi_sided"),
            ("II", "quadratic"),
        )
    }
    assert keys[("II", "bi_sided")] == {"w1.weight", "w2.weight", "w3.weight", "alpha", "alpha2"}
    assert keys[("II", "one_sided")] == {"w1.weight", "w2.weight", "w3.weight", "alpha"}
    assert keys[("I", "bi_sided")] == {"w1.weight", "w3.weight", "alpha"}
    assert keys[("II", "quadratic")] == {"w1.weight", "w2.weight", "w3.weight", "alpha"}
    torch.manual_seed(0)
    net = ShallowNet(3, 5, kind="moa", dictionary=("relu", "tanh"), gate="literal")
    assert net.gate.bias is None and net.alpha is not None
    x = torch.randn(7, 3)
    z = net.l1(x)
    half = 0.5 * (torch.relu(z) + torch.tanh(z))
    assert torch.allclose(net(x), net.l2(half).squeeze(-1), atol=1e-6)
    layer = MixtureOfActivationsFFN(6, 12, "II", "bi_sided", dictionary=("relu", "tanh"))
    pyro.clear_param_store()
    tr = poutine.trace(StochasticGates(layer, name="prior_check").model).get_trace(
        x[:, :2].repeat(1, 3)
    )
    prior = tr.nodes["z"]["fn"].base_dist
    assert prior.probs.shape == (7, 4) and bool((prior.probs == 0.5).all())
    pyro.clear_param_store()


def test_checkpointing_recomputes_the_hidden_layer_in_training_only():
    """``checkpointing`` recomputes the activation stack in the backward pass of a training
    step; in eval mode (even with gradients on, as when directions are identified from a
    model in eval mode) the hidden layer is computed once. Outputs and gradients agree."""
    torch.manual_seed(0)
    plain = MixtureOfActivationsFFN(6, 12, dictionary=("relu", "tanh"))
    ckpt = MixtureOfActivationsFFN(6, 12, dictionary=("relu", "tanh"), checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    hidden = ckpt._hidden
    ckpt._hidden = lambda x: calls.append(1) or hidden(x)
    x = torch.randn(3, 6)
    for training, want in ((True, 2), (False, 1)):
        calls.clear()
        ckpt.train(training)
        plain.train(training)
        ckpt.zero_grad()
        plain.zero_grad()
        ckpt(x).square().sum().backward()
        plain(x).square().sum().backward()
        assert len(calls) == want, training
        assert torch.allclose(ckpt.w1.weight.grad, plain.w1.weight.grad, atol=1e-6)
