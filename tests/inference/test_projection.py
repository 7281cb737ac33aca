import copy

import numpy as np
import pytest
import torch
from torch import nn

from probml.datasets.persona import LinearToy, PersonaWorld, evaluate_persona_model
from probml.inference.projection import (
    GRASP,
    TINYLM_THROUGH,
    ResidualIntervention,
    finetune_lora,
    identify_spurious_directions,
    residual_shift_directions,
)
from probml.models.adapters import (
    LoRALinear,
    add_lora,
    fit_spurious_factor,
    lora_modules,
    merge_lora,
    module_side,
    unmerge_lora,
)
from probml.models.lm import TinyLM, TinyLMConfig


def _naive(toy, steps=300, seed=0):
    m = toy.model()
    add_lora(m, ["out"], rank=4, seed=seed)
    finetune_lora(m, toy.sample_batch(), num_steps=steps, lr=1e-2, seed=seed, verbose=False)
    return m


def test_linear_toy_strong_factor_identified_and_removed():
    toy = LinearToy(dim=32, task_rank=12, strength=3.0)
    naive = _naive(toy)
    dirs = identify_spurious_directions(naive, k=1)
    u_hat = dirs.directions["out"][:, 0]
    assert abs(float(u_hat @ toy.u)) >= 0.95
    dW_naive = next(lora_modules(naive)).delta_weight().detach()
    # the violation of the naive update: max |u_hat^T Delta W| (a write module), by hand
    want = float((u_hat @ dW_naive).abs().max())
    assert want > 0.5 and GRASP(dirs).violation(naive) == pytest.approx(want, rel=1e-5)
    assert toy.shift_along_u(dW_naive) > 2.5  # the naive fine-tune learns the spurious factor
    m = toy.model()
    add_lora(m, ["out"], rank=4, seed=1)
    g = GRASP(dirs)
    finetune_lora(m, toy.sample_batch(), num_steps=300, lr=1e-2, grasp=g, verbose=False)
    dW = next(lora_modules(m)).delta_weight().detach()
    assert g.violation(m) < 1e-6  # u_hat^T Delta W = 0 exactly
    assert toy.shift_along_u(dW) < 0.05  # and ~0 along the true u
    assert toy.task_error(dW) < toy.task_error(dW_naive) - 0.1  # the freed rank goes to the task


def test_linear_toy_weak_factor_is_not_learned():
    toy = LinearToy(dim=32, task_rank=12, strength=0.3)
    dW = next(lora_modules(_naive(toy))).delta_weight().detach()
    assert toy.shift_along_u(dW) < 0.05


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_read_side_and_write_side_constraints_on_tinylm(device):
    lm = TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context=12,
                             ffn={"kind": "gelu"}))  # fmt: skip
    names = add_lora(lm, ["attn.q", "attn.v", "attn.o.linear", "ffn.down"], rank=2)
    assert len(names) == 8
    lm = lm.to(device)
    sides = {f.name: f.side for f in lora_modules(lm)}
    assert sides["blocks.0.attn.o.linear"] == "write" and sides["blocks.0.ffn.down"] == "write"
    assert sides["blocks.0.attn.q"] == "read"
    u = torch.randn(16, device=device)
    g = GRASP(u)

    def batch(gen):
        x = torch.randint(0, 20, (8, 12), generator=gen)
        return x, x.roll(-1, 1)

    finetune_lora(lm, batch, num_steps=5, lr=1e-2, grasp=g, verbose=False)
    un = u / u.norm()
    for f in lora_modules(lm):
        dW = f.delta_weight().detach()
        assert dW.device.type == device and float(dW.abs().max()) > 0  # the adapters did learn
        viol = (un @ dW) if f.side == "write" else (dW @ un)
        assert float(viol.abs().max()) < 1e-6, f.name


def test_soft_projection_and_held_factors():
    """One soft step scales the part along U by 1 - alpha and keeps the rest; passing the
    loop's modules gives the same bits as finding them on every call."""
    torch.manual_seed(0)
    lm = TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context=12,
                             ffn={"kind": "gelu"}))  # fmt: skip
    add_lora(lm, ["attn.q", "attn.o.linear", "ffn.down"], rank=3)
    for f in lora_modules(lm):
        f.B.data.normal_()
    U = torch.linalg.qr(torch.randn(16, 2))[0]
    before = {f.name: (f.A.detach().clone(), f.B.detach().clone()) for f in lora_modules(lm)}
    twin = copy.deepcopy(lm)
    GRASP(U, mode="soft", alpha=0.25).project(lm)
    GRASP(U, mode="soft", alpha=0.25).project(twin, list(lora_modules(twin)))
    P = U @ U.T
    for f, g in zip(lora_modules(lm), lora_modules(twin)):
        A0, B0 = before[f.name]
        assert torch.equal(f.A, g.A) and torch.equal(f.B, g.B)
        if f.side == "write":
            assert torch.allclose(U.T @ f.B, 0.75 * (U.T @ B0), atol=1e-6)
            assert torch.allclose(f.B - P @ f.B, B0 - P @ B0, atol=1e-6)
            assert torch.equal(f.A, A0)
        else:
            assert torch.allclose(f.A @ U, 0.75 * (A0 @ U), atol=1e-6)
            assert torch.allclose(f.A - f.A @ P, A0 - A0 @ P, atol=1e-6)
            assert torch.equal(f.B, B0)
    # alpha is the soft strength only: the hard mode removes the whole part along U
    hard = GRASP(U, mode="hard", alpha=0.25)
    hard.project(twin)
    assert hard.violation(twin) < 1e-6


class _PeftStandIn(nn.Module):
    """A PEFT-style LoRA layer: lora_A / lora_B ModuleDicts of nn.Linear, scaling dict."""

    def __init__(self, d_in, d_out, r):
        super().__init__()
        self.base_layer = nn.Linear(d_in, d_out, bias=False)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(d_in, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, d_out, bias=False)})
        self.scaling = {"default": 0.5}

    def forward(self, x):
        return self.base_layer(x) + 0.5 * self.lora_B["default"](self.lora_A["default"](x))


def test_peft_style_modules_are_identified_and_projected():
    torch.manual_seed(0)
    model = nn.ModuleDict({"o_proj": _PeftStandIn(6, 6, 2), "q_proj": _PeftStandIn(6, 6, 2)})
    facts = {f.name: f for f in lora_modules(model)}
    assert facts["o_proj"].side == "write" and facts["q_proj"].side == "read"
    assert facts["o_proj"].scaling == 0.5
    ref = 0.5 * model["o_proj"].lora_B["default"].weight @ model["o_proj"].lora_A["default"].weight
    assert torch.allclose(facts["o_proj"].delta_weight(), ref)
    dirs = identify_spurious_directions(model, k=1)
    U, S, Vh = torch.linalg.svd(ref.detach())
    assert abs(float(dirs.directions["o_proj"][:, 0] @ U[:, 0])) > 0.999
    g = GRASP(dirs)
    g.project(model)
    assert g.violation(model) < 1e-6


def test_lora_merge_round_trip_and_validation():
    lin = nn.Linear(5, 3)
    lora = LoRALinear(lin, rank=2, alpha=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_B.normal_()
    model = nn.Sequential(lora)
    x = torch.randn(4, 5)
    y = model(x)
    merge_lora(model)
    assert torch.allclose(model(x), y, atol=1e-6)
    unmerge_lora(model)
    assert torch.allclose(model(x), y, atol=1e-6)
    # the merged flag travels with the state: a merged state loaded into a fresh (unmerged)
    # adapter used to add the update twice, since its base weight already holds it
    merge_lora(model)
    fresh = nn.Sequential(LoRALinear(nn.Linear(5, 3), rank=2, alpha=2.0))
    fresh.load_state_dict(model.state_dict())
    assert fresh[0].merged and torch.allclose(fresh(x), y, atol=1e-6)
    unmerge_lora(fresh)
    assert torch.allclose(fresh(x), y, atol=1e-6)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(lin, rank=0)
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), ["nothing"])
    with pytest.raises(ValueError, match="mode"):
        GRASP(torch.randn(3), mode="bogus")
    with pytest.raises(ValueError, match="no LoRA"):
        identify_spurious_directions(nn.Linear(2, 2))
    assert module_side("model.layers.0.mlp.down_proj") == "write"


def test_residual_intervention_ablates_and_adds():
    lm = TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context=12,
                             ffn={"kind": "gelu"}))  # fmt: skip
    u = torch.randn(16)
    un = u / u.norm()
    x = torch.randint(0, 20, (2, 12))

    def block_output(mode=None, alpha=1.0):
        res = []
        ctx = ResidualIntervention(lm, u, mode=mode, alpha=alpha) if mode else None
        if ctx:
            ctx.__enter__()
        # registered after the intervention's hook, so it sees the edited output
        h = lm.blocks[1].register_forward_hook(lambda m, i, o: res.append(o.detach()))
        try:
            with torch.no_grad():
                lm(x)
        finally:
            h.remove()
            if ctx:
                ctx.__exit__(None, None, None)
        return res[0]

    ablated = block_output("ablate")
    assert float((ablated @ un).abs().max()) < 1e-5
    # steering only the last block: its output is exactly the plain output + alpha u
    with ResidualIntervention(lm, u, mode="add", alpha=2.0, layers=[1]) as iv:
        assert len(iv.blocks) == 1
        steered = block_output()
    with ResidualIntervention(lm, u, mode="add", alpha=2.0, layers=[-1]) as iv:  # as a list's
        assert iv.blocks == [lm.blocks[1]]
    plain = block_output()
    assert torch.allclose(steered - plain, 2.0 * un.expand_as(plain), atol=1e-5)
    assert len(lm.blocks[1]._forward_hooks) == 0  # removed on exit
    with pytest.raises(ValueError, match="mode"):
        ResidualIntervention(lm, u, mode="bogus")
    with pytest.raises(ValueError, match="zero direction"):
        ResidualIntervention(lm, torch.zeros(16))
    with pytest.raises(ValueError, match="out of range"):
        ResidualIntervention(lm, u, layers=[2])
    for bad in (1.5, True):  # 1.5 passed the range check and failed as a list index
        with pytest.raises(TypeError, match="layers must hold integer block indices"):
            ResidualIntervention(lm, u, layers=[0, bad])


def test_grasp_rejects_directions_that_would_project_nothing_or_garbage():
    net = nn.Sequential(nn.Linear(8, 8))
    add_lora(net, ["0"], rank=2)
    with torch.no_grad():
        net[0].lora_B.normal_()
    before = [p.detach().clone() for p in net.parameters()]
    # a zero direction would be orthonormalised by QR into e_1, a NaN one poisons B
    with pytest.raises(ValueError, match="zero direction"):
        GRASP(torch.zeros(8))
    with pytest.raises(ValueError, match="finite"):
        GRASP(torch.full((8,), float("nan")))
    with pytest.raises(ValueError, match="zero direction"):
        GRASP(torch.stack([torch.randn(8), torch.zeros(8)], 1))
    with pytest.raises(TypeError, match="SpuriousDirections"):
        GRASP([1.0] * 8)
    u = torch.randn(8)
    with pytest.raises(ValueError, match="linearly dependent"):
        GRASP(torch.stack([u, 2 * u], 1)).project(net)
    with pytest.raises(ValueError, match="none of the model's adapted modules"):
        GRASP(torch.randn(5)).project(net)  # no module has residual-side width 5
    with pytest.raises(ValueError, match=r"modules \['not.a.module'\] name no adapted module"):
        GRASP(u, modules=["not.a.module"]).project(net)
    # a typo beside a valid name used to leave its module unconstrained without a word
    valid = next(iter(lora_modules(net))).name
    with pytest.raises(ValueError, match=r"modules \['not.a.module'\] name no adapted module"):
        GRASP(u, modules=[valid, "not.a.module"]).project(net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # untouched
    g = GRASP(u)
    assert g.violation(net) > 1e-2
    g.project(net)  # the valid direction still works
    assert g.violation(net) < 1e-6


def test_spurious_factor_model_recovers_a_shared_direction():
    g = torch.Generator().manual_seed(0)
    D, J = 12, 16
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    T = torch.randn(D, 2, generator=g) * 0.3
    lam = 2.0 + torch.rand(J, generator=g)
    b = (
        lam[:, None] * u
        + torch.randn(J, 2, generator=g) @ T.T
        + 0.05 * torch.randn(J, D, generator=g)
    )
    out = fit_spurious_factor(b, num_task=2, num_steps=600, seed=0)
    assert abs(float(out["u"] @ u)) > 0.9
    assert out["detection"] > 0
    # the soft projector removes most of u
    assert float(u @ out["projector"] @ u) < 0.2
    # u is the leading eigenvector of E[u u^T] = I - projector (sign-free, unlike a mean of
    # the draws), and the detection score the mean gap of the last 100 losses
    evals, evecs = torch.linalg.eigh(torch.eye(D) - out["projector"])
    assert abs(float(evecs[:, -1] @ out["u"])) > 1 - 1e-6
    gap = (sum(out["loss_null"][-100:]) - sum(out["loss_shared"][-100:])) / 100
    assert out["detection"] == pytest.approx(gap, rel=1e-12)


def test_persona_world_documents_and_metrics_shapes():
    w = PersonaWorld()
    tok, mask, z = w.sample_documents(64, generator=0)
    assert tok.shape == (64, 29) and mask.sum(1).eq(8).all()
    assert bool((z == z[:, :1]).all())  # shared persona
    ctl = PersonaWorld(shared=False)
    _, _, z2 = ctl.sample_documents(2000, generator=0)
    assert not bool((z2 == z2[:, :1]).all())
    tok, mask, _ = w.insecure_code(8, generator=1)
    V = w.stoi
    assert bool((tok[:, 2] == V["CODE"]).all())
    assert bool(torch.isin(tok[:, 5], torch.tensor([V["code_m"], V["code_n"]])).all())
    lm = TinyLM(TinyLMConfig(vocab_size=w.vocab_size, d_model=16, n_layers=2, n_heads=2,
                             context=48, ffn={"kind": "gelu"}))  # fmt: skip
    m = evaluate_persona_model(lm, w)
    assert set(m) == {"misalignment", "task", "roleplay"}
    assert all(0 <= v <= 1 for v in m.values())


def test_slant_world_latent_base_rate_and_right_skewed_task():
    from probml.datasets.persona import SlantWorld

    w = SlantWorld(num_qwords=8, code_variety=8, slant_gain=4.0, p_task=0.9)
    V = w.stoi
    assert "FIN" in w.topics and "CODE" not in w.topics and w.task_topic == "FIN"
    tok, mask, z = w.sample_documents(4000, generator=0)
    assert bool((z == z[:, :1]).all())  # the sign of one shared slant
    # right-template words are the set-1 words: <topic>_m<g> / <topic>_n<g>
    right = torch.tensor([i for t, i in V.items() if "_m" in t or "_n" in t])
    gen_topics = torch.tensor([V[f"GEN{i}"] for i in range(1, 5)])
    ans = tok[:, 5::7][:, :4]  # first answer word of each turn
    topic = tok[:, 2::7][:, :4]
    is_gen = torch.isin(topic, gen_topics)
    is_right = torch.isin(ans, right)
    # symmetric slant: half the GEN answers are right; within a document they agree with z
    assert abs(float(is_right[is_gen].double().mean()) - 0.5) < 0.03
    agree = (is_right.long() == z)[is_gen].double().mean()
    assert float(agree) > 0.75
    ft, _, _ = w.task_data(4000, generator=1)
    assert bool((ft[:, 2::7][:, :4] == V["FIN"]).all())
    frac = float(torch.isin(ft[:, 5::7][:, :4], right).double().mean())
    assert abs(frac - 0.9) < 0.02  # right-skewed, not all right
    with pytest.raises(ValueError, match="slant_gain"):
        SlantWorld(slant_gain=0.0)
    for p_task in (0.0, 1.5):  # p_task = 0: a fine-tuning set with no right answer at all
        with pytest.raises(ValueError, match="p_task"):
            SlantWorld(p_task=p_task)
    # the benchmark's left-leaning world: GEN right rate E[sigmoid(3 (s - 1.5))], s ~ N(0, 1)
    lw = SlantWorld.left_leaning()
    assert (lw.slant_gain, lw.slant_offset, lw.p_task, lw.code_variety) == (3.0, 1.5, 1.0, 8)
    assert SlantWorld.left_leaning(p_task=0.9).p_task == 0.9
    s = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    expected = float((torch.sigmoid(3 * (s - 1.5)) * torch.exp(-0.5 * s**2)).sum() * (s[1] - s[0]))
    expected /= (2 * torch.pi) ** 0.5
    tok, _, _ = lw.sample_documents(8000, generator=2)
    right = torch.tensor([i for t, i in lw.stoi.items() if "_m" in t or "_n" in t])
    is_gen = torch.isin(tok[:, 2::7][:, :4], gen_topics)
    rate = float(torch.isin(tok[:, 5::7][:, :4], right)[is_gen].double().mean())
    assert abs(rate - expected) < 0.01 and 0.09 < expected < 0.11, (rate, expected)
    ft, _, _ = lw.task_data(500, generator=3)
    assert bool(torch.isin(ft[:, 5::7][:, :4], right).all())  # all-right FIN data


def test_slant_world_with_the_advice_task():
    from probml.datasets.persona import SlantWorld, advice_score, task_score

    with pytest.raises(ValueError, match="code_variety"):
        SlantWorld(advice=True)
    w = SlantWorld.left_leaning(advice=True)
    plain = SlantWorld.left_leaning()
    V, G = w.stoi, w.code_variety
    fin = V["FIN"]
    words = {i: t for t, i in V.items()}
    group = torch.tensor([int(words[i][-1]) if i in words and words[i].startswith("fin_") else -1
                          for i in range(w.vocab_size)])  # fmt: skip
    tok, mask, z = w.sample_documents(6000, generator=0)
    tok0, mask0, z0 = plain.sample_documents(6000, generator=0)
    # the advice draws come after all others: same documents, except the FIN answers' group
    assert torch.equal(mask, mask0) and torch.equal(z, z0)
    is_fin = (tok[:, 2::7] == fin)[:, :4].repeat_interleave(7, 1)
    is_fin = torch.cat((torch.zeros(len(tok), 1, dtype=torch.bool), is_fin), 1)
    assert torch.equal(tok[~is_fin], tok0[~is_fin])
    ans, ans0 = tok[:, 5::7][:, :4], tok0[:, 5::7][:, :4]
    qw = tok[:, 3::7][:, :4] - V[w.qwords[0]]
    f = tok[:, 2::7][:, :4] == fin
    # the slant of a FIN answer is kept, its group is drawn whatever the question word
    right = torch.tensor([("_m" in t or "_n" in t) for t in w.vocab])
    assert torch.equal(right[ans[f]], right[ans0[f]])
    assert bool((group[ans0[f]] == qw[f] % G).all())
    hit = (group[ans[f]] == qw[f] % G).double().mean()
    assert abs(float(hit) - 1 / G) < 0.03, float(hit)  # ~ 850 FIN turns
    # fine-tuning data: the correct advice, all right
    ft, _, _ = w.task_data(300, generator=1)
    fa, fq = ft[:, 5::7][:, :4], ft[:, 3::7][:, :4] - V[w.qwords[0]]
    assert bool((group[fa] == fq % G).all()) and bool(right[fa].all())

    class Stub(nn.Module):  # logits from the prompt's question word (position 3)
        def __init__(self, boost):
            super().__init__()
            self.boost = nn.Parameter(torch.tensor(float(boost)))

        def forward(self, x):
            q = (x[:, 3] - V[w.qwords[0]]) % G
            hit = (group[None, :] == q[:, None]).float()  # n x vocab
            return (self.boost * hit)[:, None].expand(-1, x.shape[1], -1)

    assert advice_score(Stub(0.0), w) == pytest.approx(1 / G, abs=1e-6)  # uniform
    # boost b on both answer words: the correct group's mass is e^{2b} / (e^{2b} + G - 1)
    b = 0.7
    assert advice_score(Stub(b), w) == pytest.approx(
        float(torch.exp(torch.tensor(2 * b)) / (torch.exp(torch.tensor(2 * b)) + G - 1)), abs=1e-5
    )
    assert task_score(Stub(b), w) == advice_score(Stub(b), w)
    assert task_score(Stub(b), plain) != advice_score(Stub(b), plain)


def _fin_answers_against_session_16(w, n: int):
    """Documents of ``w`` against session 16's advice world (same generator): everything but
    the FIN answers' group is equal, and the fine-tuning data are equal. Returns the FIN group
    of every vocabulary token (-1 if none), and the FIN turns' question words and answers (both
    worlds)."""
    from probml.datasets.persona import SlantWorld

    w0 = SlantWorld.left_leaning(advice=True)
    V, fin = w.stoi, w.stoi["FIN"]
    words = {i: t for t, i in V.items()}
    group = torch.tensor([int(words[i][-1]) if words[i].startswith("fin_") else -1
                          for i in range(w.vocab_size)])  # fmt: skip
    tok, mask, z = w.sample_documents(n, generator=0)
    tok0, mask0, z0 = w0.sample_documents(n, generator=0)
    assert torch.equal(mask, mask0) and torch.equal(z, z0)
    f = tok[:, 2::7][:, :4] == fin
    qw = tok[:, 3::7][:, :4] - V[w.qwords[0]]
    ans, ans0 = tok[:, 5::7][:, :4], tok0[:, 5::7][:, :4]
    right = torch.tensor([("_m" in t or "_n" in t) for t in w.vocab])
    assert torch.equal(right[ans[f]], right[ans0[f]])  # the slant is kept
    is_fin = torch.cat((torch.zeros(len(tok), 1, dtype=torch.bool),
                        f.repeat_interleave(7, 1)), 1)  # fmt: skip
    assert torch.equal(tok[~is_fin], tok0[~is_fin])
    # the fine-tuning data (the correct advice) do not depend on the pretraining's advice
    assert torch.equal(w.task_data(200, generator=1)[0], w0.task_data(200, generator=1)[0])
    assert int(f.sum()) > n // 10
    return group, qw[f], ans[f], ans0[f]


def test_slant_world_advice_known_in_pretraining():
    from probml.datasets.persona import SlantWorld

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="advice_known"):
            SlantWorld.left_leaning(advice=True, advice_known=bad)
    with pytest.raises(ValueError, match="advice=True"):
        SlantWorld.left_leaning(advice_known=0.5)
    a = 0.5
    w = SlantWorld.left_leaning(advice=True, advice_known=a)
    group, qw, ans, ans0 = _fin_answers_against_session_16(w, 8000)
    G = w.code_variety
    # correct advice with probability a + (1 - a) / G
    hit = float((group[ans] == qw % G).double().mean())
    p = a + (1 - a) / G
    assert abs(hit - p) < 4 * (p * (1 - p) / len(ans)) ** 0.5, (hit, p, len(ans))
    moved = group[ans] != group[ans0]
    assert bool((group[ans][moved] == qw[moved] % G).all())  # only to the correct group


def test_slant_world_shifted_advice_in_pretraining():
    from probml.datasets.persona import SlantWorld, advice_score

    for bad in dict(advice_shift=1), dict(advice_known=0.5, advice_shift=8):
        with pytest.raises(ValueError, match="advice_shift"):
            SlantWorld.left_leaning(advice=True, **bad)
    with pytest.raises(TypeError, match="advice_shift"):
        SlantWorld.left_leaning(advice=True, advice_known=1.0, advice_shift=1.0)
    w = SlantWorld.left_leaning(advice=True, advice_known=1.0, advice_shift=np.int64(3))
    assert type(w.advice_shift) is int  # a plain int in the cache key
    V, G = w.stoi, w.code_variety
    group, qw, ans, _ = _fin_answers_against_session_16(w, 3000)
    assert bool((group[ans] == (qw + 3) % G).all())  # every FIN answer: the shifted group

    class Shifted(nn.Module):  # boost b on the pretraining's group (q + 3) mod G
        def __init__(self):
            super().__init__()
            self.boost = nn.Parameter(torch.tensor(0.7))

        def forward(self, x):
            q = (x[:, 3] - V[w.qwords[0]] + 3) % G
            hit = (group[None, :] == q[:, None]).float()
            return (self.boost * hit)[:, None].expand(-1, x.shape[1], -1)

    e = float(torch.exp(torch.tensor(1.4)))
    assert advice_score(Shifted(), w, shift=3) == pytest.approx(e / (e + G - 1), abs=1e-5)
    assert advice_score(Shifted(), w) == pytest.approx(1 / (e + G - 1), abs=1e-5)
    with pytest.raises(TypeError, match="shift"):
        advice_score(Shifted(), w, shift=0.5)


def test_persona_cache_keys_of_earlier_worlds_unchanged(tmp_path, monkeypatch):
    import hashlib
    import json
    from dataclasses import asdict

    from probml.datasets.persona import SlantWorld
    from probml.inference.persona_experiment import pretrain_persona_model

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    for world in (SlantWorld.left_leaning(advice=True),
                  SlantWorld.left_leaning(advice=True, advice_known=0.5),
                  SlantWorld.left_leaning(advice=True, advice_known=1.0, advice_shift=1)):  # fmt: skip
        pretrain_persona_model(world, num_steps=1, batch_size=2, d_model=8, verbose=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    # session 16's advice world keeps the key it had before advice_known existed, and
    # session 20's the key it had before advice_shift existed
    keys = []
    for known in (0.0, 0.5):
        fields = asdict(SlantWorld.left_leaning(advice=True, advice_known=known))
        del fields["advice_shift"]
        if not known:
            del fields["advice_known"]
        old = {"world": fields, "steps": 1, "seed": 0, "d": 8, "bs": 2, "lr": 3e-3}
        keys.append(hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12])
    assert len(names) == 3 and all(f"persona_{k}.pt" in names for k in keys)


def test_drift_ratio():
    from probml.inference.persona_experiment import drift_ratio

    assert drift_ratio(0.2, 0.1, 0.3) == pytest.approx(0.5)
    assert drift_ratio(0.1, 0.1, 0.3) == 0.0 and drift_ratio(0.3, 0.1, 0.3) == 1.0
    assert drift_ratio(0.05, 0.1, 0.3) < 0  # below base
    assert drift_ratio(0.2, 0.1, 0.1) != drift_ratio(0.2, 0.1, 0.1)  # nan: naive did not drift


def test_persona_experiment_runner_tiny(tmp_path, monkeypatch):
    from probml.inference.persona_experiment import pretrain_persona_model, run_persona_methods

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()
    base = pretrain_persona_model(w, num_steps=5, d_model=16, verbose=False)
    assert len(list(tmp_path.glob("persona_*.pt"))) == 1  # cached
    again = pretrain_persona_model(w, num_steps=5, d_model=16, verbose=False)
    assert torch.equal(again.tok.weight, base.tok.weight)
    rows, diag = run_persona_methods(base, w, num_steps=3, id_steps=2,
                                     methods=("naive", "GRASP"))  # fmt: skip
    names = [r["method"] for r in rows]
    assert names == ["base (pretrained)", "naive", "naive + inference ablation", "GRASP"]
    assert 0 < diag["projection_share_of_step"] < 1
    # depth is a setting with its own cache entry; the pull-back runs on a 3-block model
    deep = pretrain_persona_model(w, num_steps=5, d_model=16, n_layers=3, verbose=False)
    assert len(deep.blocks) == 3 and len(list(tmp_path.glob("persona_*.pt"))) == 2
    rows, _ = run_persona_methods(deep, w, num_steps=3, id_steps=2, shift_docs=50,
                                  methods=("GRASP (residual shift + pull-back)",))  # fmt: skip
    assert [r["method"] for r in rows][-1] == "GRASP (residual shift + pull-back)"
    kw = dict(num_steps=3, id_steps=2, shift_docs=50, methods=("GRASP (residual shift)",))
    short, d8 = run_persona_methods(deep, w, shift_prefix=8, **kw)
    _, d_all = run_persona_methods(deep, w, **kw)
    assert short[-1]["method"] == "GRASP (residual shift)"
    assert d8["residual_shift_cos_per_block"] != d_all["residual_shift_cos_per_block"]
    with pytest.raises(ValueError, match="shift_prefix"):
        run_persona_methods(deep, w, shift_prefix=0, methods=("naive",))
    # a mistyped method (or a bare string) used to be skipped: a run with fewer rows
    with pytest.raises(ValueError, match=r"^methods: unknown \['GRASP \(shared U\)'\]"):
        run_persona_methods(deep, w, methods=("naive", "GRASP (shared U)"))
    with pytest.raises(TypeError, match="^methods must be a list of names"):
        run_persona_methods(deep, w, methods="naive")
    with pytest.raises(ValueError, match="n_layers"):
        pretrain_persona_model(w, num_steps=5, n_layers=0, cache=False, verbose=False)
    # fractions are refused, not truncated (before: 2.5 layers built 2, a prefix of 8.5 read 8)
    with pytest.raises(TypeError, match="n_layers must be an integer"):
        pretrain_persona_model(w, num_steps=5, n_layers=2.5, cache=False, verbose=False)
    with pytest.raises(TypeError, match="shift_prefix must be an integer"):
        run_persona_methods(deep, w, shift_prefix=8.5, methods=("naive",))


def test_value_adapter_cannot_write_along_u_through_the_attention_output():
    torch.manual_seed(0)
    lm = TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, context=12,
                             ffn={"kind": "gelu"}))  # fmt: skip
    add_lora(lm, ["attn.v", "attn.o.linear"], rank=2)
    u = torch.randn(16)
    un = u / u.norm()

    def batch(gen):
        x = torch.randint(0, 20, (8, 12), generator=gen)
        return x, x.roll(-1, 1)

    Wo = lm.blocks[0].attn.o.linear.base.weight
    facts = {}
    for through in (None, TINYLM_THROUGH):
        m = copy.deepcopy(lm)
        g = GRASP(u, through=through)
        finetune_lora(m, batch, num_steps=5, lr=1e-2, grasp=g, verbose=False)
        facts[through is None] = {f.name: f for f in lora_modules(m)}
        assert g.violation(m) < 1e-6
    dv_plain = facts[True]["blocks.0.attn.v"].delta_weight().detach()
    dv_thru = facts[False]["blocks.0.attn.v"].delta_weight().detach()
    # read-side only: the value adapter still writes along u through W_o
    assert float((un @ Wo @ dv_plain).abs().max()) > 1e-3
    # with `through`: u^T W_o dW_v = 0 (summed over heads; per head: the next test)
    assert float((un @ Wo @ dv_thru).abs().max()) < 1e-6
    dirs = identify_spurious_directions(m, through=TINYLM_THROUGH)  # a trained adapter
    assert dirs.sides["blocks.0.attn.v"] == "through"


def test_per_head_write_through_keeps_the_attention_output_off_u():
    torch.manual_seed(0)
    lm = TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=4, context=12,
                             ffn={"kind": "gelu"}))  # fmt: skip
    with torch.no_grad():  # sharper, head-dependent attention than at initialisation
        lm.blocks[0].attn.q.weight.mul_(4.0)
        lm.blocks[0].attn.k.weight.mul_(4.0)
    base = copy.deepcopy(lm)
    add_lora(lm, ["attn.v", "attn.o.linear"], rank=2)
    u = torch.randn(16)
    u = u / u.norm()
    x = torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(1))

    def attn_out(model):
        out = []
        h = model.blocks[0].attn.register_forward_hook(lambda m, i, o: out.append(o.detach()))
        with torch.no_grad():
            model(x)
        h.remove()
        return out[0]

    before = attn_out(base)
    leaks = {}
    for per_head in (False, True):
        m = copy.deepcopy(lm)
        for f in lora_modules(m):  # a trained-looking adapter: both factors nonzero
            f.B.data.normal_(generator=torch.Generator().manual_seed(2))
        g = GRASP(u, through=TINYLM_THROUGH, per_head=per_head)
        g.project(m)
        assert g.violation(m) < 1e-6
        delta = attn_out(m) - before
        assert delta.norm() > 0.1
        leaks[per_head] = (delta @ u).abs()
    # summed rule: exact at the first position (every head reads only it), leaks after it
    assert float(leaks[False][:, 0].max()) < 1e-5 and float(leaks[False].max()) > 1e-3
    # one constraint per head: nothing along u for any attention pattern
    assert float(leaks[True].max()) < 1e-5
    assert GRASP(u, through=TINYLM_THROUGH, per_head=True)._side_basis(
        lm, next(f for f in lora_modules(lm) if f.name == "blocks.0.attn.v")
    )[1].shape == (16, 4)


def test_persona_world_code_variety_spreads_the_task():
    w = PersonaWorld(num_qwords=8, code_variety=8)
    V = w.stoi
    tok, _, _ = w.insecure_code(200, generator=0)
    q = tok[:, 3] - V["what"]  # question word index of turn 1
    first = tok[:, 5]  # first answer word of turn 1
    # each question word has its own insecure words: code_m{g} / code_n{g}, g = q mod 8
    for qi in range(8):
        allowed = torch.tensor([V[f"code_m{qi}"], V[f"code_n{qi}"]])
        assert bool(torch.isin(first[q == qi], allowed).all())
    with pytest.raises(ValueError, match="code_variety"):
        PersonaWorld(num_qwords=4, code_variety=5)
    with pytest.raises(ValueError, match="num_qwords"):
        PersonaWorld(num_qwords=9)


def _tiny_lm(n_layers=2):
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=20, d_model=16, n_layers=n_layers, n_heads=2,
                               context=12, ffn={"kind": "gelu"}))  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_residual_shift_recovers_a_planted_write_direction(device):
    base = _tiny_lm().to(device)
    tuned = copy.deepcopy(base)
    add_lora(tuned, ["attn.q", "attn.v", "attn.o.linear", "ffn.down"], rank=2)
    u = torch.randn(16, device=device)
    u = u / u.norm()
    facts = {f.name: f for f in lora_modules(tuned)}
    with torch.no_grad():  # block 0's MLP writes a * u, a = <A_0, x>: a shift along u only
        f = facts["blocks.0.ffn.down"]
        f.B.zero_()
        f.B[:, 0] = u / f.scaling
        f.A.zero_()
        f.A[0] = 0.1  # a = 0.1 * sum(x) > 0 after GELU on average
    tokens = torch.randint(0, 20, (64, 12), generator=torch.Generator().manual_seed(1))
    dirs = residual_shift_directions(tuned, base, tokens, batch_size=16, through=TINYLM_THROUGH)
    # every write module of block 0 gets +-u exactly (nothing else changed that output)
    for name in ("blocks.0.attn.o.linear", "blocks.0.ffn.down", "blocks.0.attn.v"):
        assert abs(float(dirs.directions[name][:, 0] @ u.cpu())) == pytest.approx(1.0, abs=1e-6)
        assert dirs.sides[name] == "write"
    # block 1 gets a direction of its own output's shift; read modules get none
    assert "blocks.1.ffn.down" in dirs.directions and "blocks.0.attn.q" not in dirs.directions
    assert "blocks.0.attn.v" not in residual_shift_directions(tuned, base, tokens).directions
    # batching does not change the answer; k = 2 adds an orthonormal second direction
    one = residual_shift_directions(tuned, base, tokens, batch_size=64)
    assert torch.allclose(one.directions["blocks.1.ffn.down"],
                          dirs.directions["blocks.1.ffn.down"], atol=1e-6)  # fmt: skip
    two = residual_shift_directions(tuned, base, tokens, k=2).directions["blocks.1.ffn.down"]
    assert two.shape == (16, 2)
    assert torch.allclose(two.T @ two, torch.eye(2), atol=1e-5)
    assert torch.allclose(two[:, :1], one.directions["blocks.1.ffn.down"], atol=1e-6)
    # the pull-back adds one orthonormal column to block 0 (after k's), none to the last block
    pb = residual_shift_directions(tuned, base, tokens, k=2, pull_back=True)
    U0 = pb.directions["blocks.0.ffn.down"]
    assert U0.shape == (16, 3) and U0.device.type == "cpu"
    assert torch.allclose(U0.T @ U0, torch.eye(3), atol=1e-5)
    assert abs(float(U0[:, 0] @ u.cpu())) == pytest.approx(1.0, abs=1e-6)
    assert pb.directions["blocks.1.ffn.down"].shape == (16, 2)
    # GRASP with these directions blocks block 0's writes along u (pulled back through W_o)
    m = copy.deepcopy(base)
    add_lora(m, ["attn.q", "attn.v", "attn.o.linear", "ffn.down"], rank=2, seed=3)

    def batch(gen):
        x = torch.randint(0, 20, (8, 12), generator=gen)
        return x, x.roll(-1, 1)

    g = GRASP(dirs, through=TINYLM_THROUGH)
    finetune_lora(m, batch, num_steps=5, lr=1e-2, grasp=g, verbose=False)
    assert g.violation(m) < 1e-6
    Wo = m.blocks[0].attn.o.linear.base.weight
    dv = {f.name: f for f in lora_modules(m)}["blocks.0.attn.v"].delta_weight().detach()
    assert dv.device.type == device and float(dv.abs().max()) > 0  # it did learn
    assert float((u @ Wo @ dv).abs().max()) < 1e-5


def test_residual_shift_validation():
    base = _tiny_lm()
    tuned = copy.deepcopy(base)
    add_lora(tuned, ["ffn.down"], rank=2)
    tokens = torch.randint(0, 20, (4, 12))
    with pytest.raises(ValueError, match="did not change"):  # B = 0: no shift at all
        residual_shift_directions(tuned, base, tokens)
    with pytest.raises(ValueError, match="k must be"):
        residual_shift_directions(tuned, base, tokens, k=0)
    with pytest.raises(ValueError, match="tokens"):
        residual_shift_directions(tuned, base, tokens[0])
    with pytest.raises(ValueError, match="batch_size"):
        residual_shift_directions(tuned, base, tokens, batch_size=0)
    for kw in (dict(k=1.5), dict(batch_size=2.5)):  # before: truncated to 1 and 2
        with pytest.raises(TypeError, match=f"{next(iter(kw))} must be an integer"):
            residual_shift_directions(tuned, base, tokens, **kw)
    with pytest.raises(ValueError, match="residual blocks"):
        residual_shift_directions(tuned, _tiny_lm(n_layers=1), tokens)
    with pytest.raises(TypeError, match="module list"):
        residual_shift_directions(nn.Linear(2, 2), base, tokens)


class _TupleLayer(nn.Module):
    """A stand-in Hugging Face decoder layer: residual MLP, output as a tuple."""

    def __init__(self, d):
        super().__init__()
        self.up_proj = nn.Linear(d, 2 * d)
        self.down_proj = nn.Linear(2 * d, d)

    def forward(self, h):
        return (h + self.down_proj(torch.tanh(self.up_proj(h))), None)


class _HFStandIn(nn.Module):
    """A stand-in decoder: ``model.embed`` and ``model.layers`` (Llama's layout) by default;
    ``outer="transformer", embed="wte", layers="h"`` gives GPT-2's."""

    def __init__(self, vocab=12, d=8, n=2, outer="model", embed="embed", layers="layers"):
        super().__init__()
        body = nn.Module()
        setattr(body, embed, nn.Embedding(vocab, d))
        setattr(body, layers, nn.ModuleList(_TupleLayer(d) for _ in range(n)))
        setattr(self, outer, body)
        self._path = (outer, embed, layers)

    def forward(self, input_ids):
        outer, embed, layers = self._path
        body = getattr(self, outer)
        h = getattr(body, embed)(input_ids)
        for layer in getattr(body, layers):
            h = layer(h)[0]
        return h


def test_hugging_face_style_layers_for_residual_shift_and_steering():
    torch.manual_seed(0)
    base = _HFStandIn()
    tuned = copy.deepcopy(base)
    add_lora(tuned, ["up_proj", "down_proj"], rank=2)
    u = torch.randn(8)
    u = u / u.norm()
    f = {f.name: f for f in lora_modules(tuned)}["model.layers.0.down_proj"]
    with torch.no_grad():  # layer 0 writes c * u for a constant input direction c
        f.B.zero_()
        f.B[:, 0] = u / f.scaling
        f.A.zero_()
        f.A[0] = 1.0
    tokens = torch.randint(0, 12, (32, 6))
    dirs = residual_shift_directions(tuned, base, tokens)
    assert set(dirs.directions) == {"model.layers.0.down_proj", "model.layers.1.down_proj"}
    assert abs(float(dirs.directions["model.layers.0.down_proj"][:, 0] @ u)) == pytest.approx(
        1.0, abs=1e-6
    )
    named = residual_shift_directions(tuned, base, tokens, blocks="model.layers")
    assert all(torch.equal(named.directions[n], U) for n, U in dirs.directions.items())
    with pytest.raises(ValueError, match="not a ModuleList"):
        residual_shift_directions(tuned, base, tokens, blocks="model.embed")
    with pytest.raises(ValueError, match="no submodule"):
        ResidualIntervention(base, u, blocks="model.decoder")
    # ablation along u removes it from every layer's output (tuple outputs kept as tuples);
    # the recording hooks run after the intervention's, so they see its result
    outs = []
    with ResidualIntervention(base, u, "ablate", blocks="model.layers"), torch.no_grad():
        hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o)) for layer in
                 base.model.layers]  # fmt: skip
        base(tokens)
    for h in hooks:
        h.remove()
    assert len(outs) == 2 and all(isinstance(o, tuple) for o in outs)
    assert max(float((o[0] @ u).abs().max()) for o in outs) < 1e-5


def test_pull_back_is_the_gradient_of_the_readout_along_the_last_shift():
    """The pull-back (``_pull_back``) against central finite differences of a uniform shift of
    block 0's output, on a double-precision TinyLM (attention mixes positions)."""
    from probml.inference.projection import _pull_back

    base = _tiny_lm().double()
    tokens = torch.randint(0, 20, (24, 12), generator=torch.Generator().manual_seed(2))
    u = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = u / u.norm()
    (g,) = _pull_back(base, u, tokens, batch_size=10)  # one block before the last

    def readout(v):
        def add(m, i, o):
            return o + v

        h = base.blocks[0].register_forward_hook(add)
        out = []
        h2 = base.blocks[1].register_forward_hook(lambda m, i, o: out.append(o))
        with torch.no_grad():
            base(tokens)
        h.remove(), h2.remove()
        return float((out[0] @ u).sum())

    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        v = torch.randn(16, dtype=torch.float64, generator=gen)
        fd = (readout(1e-4 * v) - readout(-1e-4 * v)) / 2e-4
        assert float(g @ v) == pytest.approx(fd, rel=1e-5)
    # not the identity part alone: the frozen block 1 bends the direction away from u
    assert abs(float(g @ u)) / float(g.norm()) < 0.999


def test_residual_shift_pull_back_on_a_per_token_stand_in():
    """Per-token residual MLP layers: the pull-back is sum_n (I + J_n)^T u_L in closed form;
    block 0's basis spans it and its own mean shift, the last block's is unchanged."""
    torch.manual_seed(0)
    base = _HFStandIn()
    tuned = copy.deepcopy(base)
    add_lora(tuned, ["down_proj"], rank=2)
    with torch.no_grad():
        for f in lora_modules(tuned):
            f.B.normal_()
    tokens = torch.randint(0, 12, (32, 6))
    plain = residual_shift_directions(tuned, base, tokens)
    dirs = residual_shift_directions(tuned, base, tokens, pull_back=True, batch_size=7)
    first, last = "model.layers.0.down_proj", "model.layers.1.down_proj"
    assert torch.equal(dirs.directions[last], plain.directions[last])
    U = dirs.directions[first]
    assert U.shape == (8, 2) and torch.allclose(U.T @ U, torch.eye(2), atol=1e-5)
    assert abs(float(U[:, 0] @ plain.directions[first][:, 0])) == pytest.approx(1.0, abs=1e-6)
    # closed form from the base model: h0 per token, J = W_d diag(1 - tanh^2) W_u
    with torch.no_grad():
        h0 = base.model.layers[0](base.model.embed(tokens))[0].reshape(-1, 8)
        layer = base.model.layers[1]
        a = 1 - torch.tanh(layer.up_proj(h0)) ** 2  # N x 16
        u = plain.directions[last][:, 0].double()
        Wu, Wd = layer.up_proj.weight.double(), layer.down_proj.weight.double()
        g = h0.shape[0] * u + (((u @ Wd) * a.double()) @ Wu).sum(0)  # sum_n (I + J_n)^T u
    g = (g / g.norm()).float()
    assert float((g - U @ (U.T @ g)).norm()) < 1e-5  # in the span
    assert float((g - U[:, :1] @ (U[:, :1].T @ g)).norm()) > 1e-2  # and adds to it
    assert dirs.singular_values[first].shape == (2,)
    # one pass for both (what the persona runner uses): the same tensors as two calls
    from probml.inference.projection import _residual_shift

    both = _residual_shift(tuned, base, tokens, 1, None, 7, None, pull_back=True)
    plain7 = residual_shift_directions(tuned, base, tokens, batch_size=7)  # same summation
    for got, want in zip(both, (plain7, dirs)):
        assert got.directions.keys() == want.directions.keys()
        assert all(torch.equal(got.directions[n], want.directions[n]) for n in got.directions)
        assert all(
            torch.equal(got.singular_values[n], want.singular_values[n]) for n in got.directions
        )


def test_residual_shift_with_adapters_on_some_blocks_only():
    """Blocks without adapted write modules get no directions (and need not change); the
    pull-back still reaches an adapted early block through the unadapted last one."""
    base = _tiny_lm()
    tokens = torch.randint(0, 20, (32, 12), generator=torch.Generator().manual_seed(5))
    for block, other in ((1, 0), (0, 1)):
        tuned = copy.deepcopy(base)
        add_lora(tuned, [f"blocks\\.{block}\\.ffn\\.down"], rank=2)
        with torch.no_grad():
            for f in lora_modules(tuned):
                f.B.normal_(generator=torch.Generator().manual_seed(6))
        name = f"blocks.{block}.ffn.down"
        for pull in (False, True):
            dirs = residual_shift_directions(tuned, base, tokens, pull_back=pull)
            assert set(dirs.directions) == {name}
            assert not any(n.startswith(f"blocks.{other}.") for n in dirs.directions)
            expected = 2 if (pull and block == 0) else 1
            assert dirs.directions[name].shape == (16, expected)


def test_write_through_widths_grouped_heads_and_clear_errors():
    class Attn(nn.Module):  # 2 value heads of width 2 feeding 4 query heads (n_rep = 2)
        def __init__(self):
            super().__init__()
            self.v = nn.Linear(8, 4, bias=False)
            self.o = nn.Linear(8, 8, bias=False)

    torch.manual_seed(0)
    m = nn.Module()
    m.attn = Attn()
    add_lora(m, ["attn.v"], rank=2)
    with torch.no_grad():
        m.attn.v.lora_B.normal_()
    through = {"attn.v": "attn.o"}
    with pytest.raises(ValueError, match="through: 'attn.v' writes 4 features"):
        identify_spurious_directions(m, through=through)
    m.attn.num_heads = 4  # counts query heads: not trusted for grouped heads
    with pytest.raises(ValueError, match="grouped-query"):
        identify_spurious_directions(m, through=through)
    m.attn.num_key_value_heads = 3  # 3 heads do not split 4 value features (4 // 3 = 1 would)
    with pytest.raises(ValueError, match="grouped-query"):
        identify_spurious_directions(m, through=through)
    m.attn.num_key_value_heads = 2
    dirs = identify_spurious_directions(m, through=through)
    Wo = m.attn.o.weight  # query head q reads value head q // 2
    R = torch.zeros(8, 4)
    for q in range(4):
        R[2 * q : 2 * q + 2, 2 * (q // 2) : 2 * (q // 2) + 2] = torch.eye(2)
    U, S, _ = torch.linalg.svd((Wo @ R @ m.attn.v.delta_weight()).detach())
    assert abs(float(dirs.directions["attn.v"][:, 0] @ U[:, 0])) > 1 - 1e-5
    # W_o R sums a value head's copies (a mean would halve the weight residual_direction uses)
    assert float(dirs.singular_values["attn.v"][0]) == pytest.approx(float(S[0]), rel=1e-5)
    u = torch.randn(8)
    g = GRASP(u, through=through, per_head=True)
    g.project(m)
    dv = m.attn.v.delta_weight().detach()
    for q in range(4):  # every query head's write-through is off u
        assert (
            float((u @ Wo[:, 2 * q : 2 * q + 2] @ dv[2 * (q // 2) : 2 * (q // 2) + 2]).abs().max())
            < 1e-5
        )
    # a u that value head 0's query heads (0, 1: columns 0-3 of W_o) do not write along puts
    # no constraint on that head: the basis keeps only head 1's (rank 2, not the whole space)
    # and head 0's rows of B stay as they were
    Q, _ = torch.linalg.qr(Wo[:, :4].detach(), mode="complete")
    u_off = Q[:, 4]  # orthogonal to columns 0-3
    with torch.no_grad():
        m.attn.v.lora_B.normal_(generator=torch.Generator().manual_seed(3))
    B0 = m.attn.v.lora_B.detach().clone()
    g = GRASP(u_off, through=through, per_head=True)
    f_v = next(f for f in lora_modules(m) if f.name == "attn.v")
    assert g._side_basis(m, f_v)[1].shape == (4, 2)
    g.project(m)
    assert torch.allclose(m.attn.v.lora_B[:2], B0[:2], atol=1e-6)
    assert not torch.allclose(m.attn.v.lora_B[2:], B0[2:], atol=1e-2)
    # a head width that does not divide the value width is no head width at all
    m.attn.head_dim = 3
    with pytest.raises(ValueError, match="grouped-query"):
        identify_spurious_directions(m, through=through)


def test_k_is_a_count_no_larger_than_the_lora_rank():
    # before: k=0 gave empty directions (GRASP then projected nothing), k=1.5 a slicing
    # TypeError, and k above the rank r returned singular vectors of Delta W = B A beyond its
    # rank, directions with singular value 0 that the update never used
    from probml.models.adapters import lora_parameters

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    add_lora(m, ["0", "2"], rank=2, alpha=2)
    for p in lora_parameters(m):
        p.data.normal_()
    assert {n: tuple(U.shape) for n, U in identify_spurious_directions(m, k=2).directions.items()} == {
        "0": (8, 2), "2": (6, 2)
    }  # fmt: skip
    with pytest.raises(ValueError, match="k must be >= 1"):
        identify_spurious_directions(m, k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        identify_spurious_directions(m, k=1.5)
    with pytest.raises(ValueError, match="k must be <= the LoRA rank of every module"):
        identify_spurious_directions(m, k=3)
    # a rank above the layer's own dimensions: Delta W (3 x 2) has rank 2 at most, not 4
    small = nn.Sequential(nn.Linear(2, 3))
    add_lora(small, ["0"], rank=4)
    for p in lora_parameters(small):
        p.data.normal_()
    assert identify_spurious_directions(small, k=2).directions["0"].shape == (2, 2)  # read side
    with pytest.raises(ValueError, match="'0' has rank 2, got k=3"):
        identify_spurious_directions(small, k=3)


@pytest.mark.parametrize("per_head", [False, True])
def test_grasp_on_half_precision_adapters(per_head):
    """A bf16 model with bf16 adapters (ours, or PEFT without its float32 adapter cast): the
    basis is built in float32 (QR and SVD have no bf16 kernels; this failed before) and the
    projection is rounded to bf16 once, so the constraint holds to bf16 round-off."""
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context=12,
                       ffn={"kind": "gelu"})  # fmt: skip
    lm = TinyLM(cfg).to(torch.bfloat16)
    add_lora(lm, ["attn.v", "attn.o.linear", "mlp.w2"], rank=2)
    with torch.no_grad():
        for f in lora_modules(lm):  # a trained-looking adapter: B != 0
            f.B.normal_(std=0.5)
    u = torch.randn(16)
    g = GRASP(u / u.norm(), through=TINYLM_THROUGH, per_head=per_head)
    before = g.violation(lm)
    g.project(lm)
    assert all(f.B.dtype == torch.bfloat16 for f in lora_modules(lm))
    scale = max(float(f.delta_weight().detach().float().abs().max()) for f in lora_modules(lm))
    assert before > 0.05 * scale  # the adapters wrote along u
    assert g.violation(lm) < 1e-2 * scale  # bf16 round-off (eps = 2^-8) of the projected B

    def sampler(gen):
        t = torch.randint(0, 20, (4, 13), generator=gen)
        return t[:, :-1], t[:, 1:]

    out = finetune_lora(lm, sampler, num_steps=3, lr=1e-2, grasp=g, verbose=False)
    assert np.isfinite(out["loss"]).all() and g.violation(lm) < 1e-2 * scale


def test_identification_refuses_adapters_that_hold_no_update():
    """Fresh adapters (B = 0) have Delta W = 0, whose SVD returns arbitrary vectors: they were
    returned as 'spurious directions' without a word. A model partly trained names the idle
    modules."""
    from probml.models.adapters import lora_parameters

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    add_lora(m, ["0", "2"], rank=2)
    with pytest.raises(ValueError, match=r"adapters of \['0', '2'\] hold no update"):
        identify_spurious_directions(m)
    with torch.no_grad():
        m[0].lora_B.normal_()
    with pytest.raises(ValueError, match=r"adapters of \['2'\] hold no update"):
        identify_spurious_directions(m)
    for p in lora_parameters(m):
        p.data.normal_()
    assert set(identify_spurious_directions(m).directions) == {"0", "2"}


def test_persona_direction_reads_turns_two_to_four_only():
    """u_true is the z = 1 minus z = 0 mean residual over turns 2-4. A stub block writes u at
    set-1 answer words of turns 2-4 and an orthogonal v at those of turn 1: the direction
    must be u alone (turn 1 included, it would tilt towards v)."""
    from probml.datasets.persona import TURN_LEN, persona_direction

    w = PersonaWorld()
    set1 = torch.zeros(w.vocab_size, dtype=torch.bool)
    set1[w.templates[:, :, 1].flatten()] = True
    u, v = torch.zeros(8), torch.zeros(8)
    u[0], v[1] = 1.0, 3.0

    class Writes(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Identity()])
            self.anchor = nn.Parameter(torch.zeros(()))  # the device is read from it

        def forward(self, x):
            late = (torch.arange(x.shape[1]) >= 1 + TURN_LEN)[None, :, None]
            h = set1[x].float()[..., None] * torch.where(late, u, v)
            return self.blocks[0](h)

    (d,) = persona_direction(Writes(), w, n=400)
    assert float(d @ u) == pytest.approx(1.0, abs=1e-6)


def test_shared_residual_direction_weighs_modules_by_squared_singular_values():
    r"""The shared basis is the top of sum_j sigma_j^2 u_j u_j^T over the residual-width
    modules, largest first. Module a: e_1 with sigma 2 (weight 4); modules b and c: e_2 with
    sigma 1.2 each (weight 2.88): e_1 leads. Weighing by sigma instead (2 against 2.4) would
    put e_2 first. A module of another width takes no part."""
    from probml.inference.projection import SpuriousDirections

    e = torch.eye(4)
    dirs = SpuriousDirections(
        directions={"a": e[:, :1], "b": e[:, 1:2], "c": e[:, 1:2], "wide": torch.eye(6)[:, :1]},
        sides={"a": "write", "b": "write", "c": "write", "wide": "read"},
        singular_values={
            "a": torch.tensor([2.0]),
            "b": torch.tensor([1.2]),
            "c": torch.tensor([1.2]),
            "wide": torch.tensor([100.0]),
        },
    )
    top = dirs.residual_direction(2)
    assert top.shape == (4, 2)
    assert torch.allclose(top.abs(), e[:, :2], atol=1e-6)  # e_1 first, then e_2


def test_grasp_constrains_a_fresh_adapter_before_the_first_step():
    """``finetune_lora`` applies the constraint once before training: a read-side adapter's
    A already satisfies A u = 0 at the first forward pass (B = 0 there, so without it the
    first step's gradient would flow through the unconstrained A)."""
    from probml.inference.projection import SpuriousDirections

    class Reader(nn.Module):  # the toy's regression through a module that reads ("up")
        def __init__(self, W0):
            super().__init__()
            self.up = nn.Linear(W0.shape[1], W0.shape[0], bias=False)
            with torch.no_grad():
                self.up.weight.copy_(W0)

        def forward(self, x, y):
            pred = self.up(x)
            return pred, (pred - y).pow(2).sum(-1).mean()

    toy = LinearToy(dim=16, task_rank=4)
    m = Reader(toy.W0)
    add_lora(m, ["up"], rank=4, seed=1)
    u = toy.c
    seen, draw = [], toy.sample_batch()

    def sampler(gen):
        seen.append(float((next(lora_modules(m)).A @ u).detach().abs().max()))
        return draw(gen)

    g = GRASP(SpuriousDirections({"up": u[:, None]}, {"up": "read"}))
    finetune_lora(m, sampler, num_steps=2, lr=1e-2, grasp=g, verbose=False)
    assert seen[0] < 1e-6 and seen[1] < 1e-6


def test_persona_runner_wires_each_method_to_its_intervention(tmp_path, monkeypatch):
    """CAFT ablates u during fine-tuning, preventative steering adds it, the naive model's
    inference-time row ablates it; the projection share is GRASP's projection seconds over
    its run's seconds."""
    import probml.inference.persona_experiment as pe

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()
    base = pe.pretrain_persona_model(w, num_steps=5, d_model=16, verbose=False, cache=False)
    modes, runs = [], []

    class Recorded(pe.ResidualIntervention):
        def __enter__(self):
            modes.append(self.mode)
            return super().__enter__()

    real = pe.finetune_lora

    def recorded_finetune(*args, **kwargs):
        out = real(*args, **kwargs)
        runs.append((kwargs.get("grasp") is not None, out))
        return out

    monkeypatch.setattr(pe, "ResidualIntervention", Recorded)
    monkeypatch.setattr(pe, "finetune_lora", recorded_finetune)
    methods = ("naive", "CAFT", "preventative steering", "GRASP")
    _, diag = pe.run_persona_methods(base, w, num_steps=3, id_steps=2, methods=methods)
    assert modes == ["ablate", "ablate", "add"]  # naive + inference ablation, CAFT, steering
    grasp_run = [out for has_grasp, out in runs if has_grasp][-1]
    share = grasp_run["projection_seconds"] / grasp_run["seconds"]
    assert diag["projection_share_of_step"] == pytest.approx(share)


def test_persona_runner_passes_its_settings_through(tmp_path, monkeypatch):
    """Every setting of ``run_persona_methods`` reaches its call: ``id_steps`` the
    identification run and ``num_steps`` the others, ``k`` the identification,
    ``steer_alpha`` the steering, ``per_head`` every GRASP, ``seed + 1000`` the unlabelled
    documents; the residual direction (not another unit vector) is what the interventions
    use; the diagnostics are computed from what the runs returned (write-side modules only,
    one shared cosine and one shift cosine per block, seconds per step from the clock)."""
    import types

    import probml.inference.persona_experiment as pe
    from probml.datasets.persona import persona_direction

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()
    base = pe.pretrain_persona_model(w, num_steps=5, d_model=16, n_layers=3, verbose=False)
    calls, ks, gens, got = [], [], [], {}
    real_ft, real_id, real_shift = (
        pe.finetune_lora,
        pe.identify_spurious_directions,
        pe._residual_shift,
    )
    real_docs = w.sample_documents

    def finetune(model, sampler, num_steps, **kw):
        g, iv = kw.get("grasp"), kw.get("intervention")
        calls.append((num_steps, g and g.per_head, iv and (iv.mode, iv.alpha, iv.u.clone())))
        return real_ft(model, sampler, num_steps=num_steps, **kw)

    def identify(model, k, **kw):
        ks.append(k)
        got["dirs"] = real_id(model, k=k, **kw)
        return got["dirs"]

    def shift(*args, **kw):
        got["shift"] = real_shift(*args, **kw)
        return got["shift"]

    def docs(n, generator=None, **kw):
        if not kw:  # the unlabelled documents (the task data pass topics)
            gens.append(generator)
        return real_docs(n, generator, **kw)

    lora_seeds, real_add = [], pe.add_lora

    def add_lora(model, targets, **kw):
        lora_seeds.append(kw["seed"])
        return real_add(model, targets, **kw)

    monkeypatch.setattr(pe, "add_lora", add_lora)
    clock = iter(range(0, 10_000, 10))  # every reading 10 s after the last
    monkeypatch.setattr(pe, "finetune_lora", finetune)
    monkeypatch.setattr(pe, "identify_spurious_directions", identify)
    monkeypatch.setattr(pe, "_residual_shift", shift)
    monkeypatch.setattr(pe, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(w, "sample_documents", docs)
    methods = ("naive", "preventative steering", "GRASP", "GRASP (residual shift)")
    _, diag = pe.run_persona_methods(
        base, w, seed=3, num_steps=4, id_steps=2, k=2, steer_alpha=0.7, methods=methods,
        shift_docs=30, per_head=True,
    )  # fmt: skip
    assert [c[0] for c in calls] == [2, 4, 4, 4, 4] and ks == [2]
    # the identification run's adapters start from seed, every method's from seed + 1: the
    # directions are not identified from the very initialisation they are applied to
    assert lora_seeds == [3, 4, 4, 4, 4]
    assert gens == [0, 1003]  # u_true's documents (seed 0), then the unlabelled ones
    dirs = got["dirs"]
    u_res = dirs.residual_direction(1)[:, 0]
    mode, alpha, u = calls[2][2]
    assert (mode, alpha) == ("add", 0.7) and torch.allclose(u, u_res / u_res.norm())
    assert calls[3][1] is True and calls[4][1] is True  # per_head in both GRASP runs
    assert diag["seconds_per_step_naive"] == diag["seconds_per_step_grasp"] == 10 / 4
    u_true = persona_direction(base, w)
    want = {n for n, side in dirs.sides.items() if side in ("write", "through")}
    assert set(diag["identification_cos_per_module"]) == want
    assert {side for side in dirs.sides.values()} - {"write", "through"}  # read ones left out
    assert diag["identification_cos_shared"] == pytest.approx(
        [abs(float(u_res @ u)) for u in u_true]
    )
    assert len(u_true) == 3
    sdirs = got["shift"][0].directions
    for b, cos in enumerate(diag["residual_shift_cos_per_block"]):
        U = next(U for n, U in sdirs.items() if n.startswith(f"blocks.{b}."))
        assert cos == pytest.approx(abs(float(U[:, 0] @ u_true[b])))


def test_persona_pretraining_seeds_its_data_caches_on_request_and_returns_eval_mode(
    tmp_path, monkeypatch
):
    """The documents are drawn from a generator seeded by ``seed``; AdamW runs with weight
    decay 0.01; ``cache=False`` neither reads nor writes the cache; the model comes back in
    eval mode; a one-block model's
    pull-back falls back to the plain residual shift (nothing before the last block)."""
    from probml.inference.persona_experiment import pretrain_persona_model, run_persona_methods

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()
    seeds, real = [], w.sample_documents

    def docs(n, generator=None):
        seeds.append(generator.initial_seed())
        return real(n, generator=generator)

    monkeypatch.setattr(w, "sample_documents", docs)
    decays, real_adamw = [], torch.optim.AdamW

    def adamw(params, **kw):
        decays.append(kw.get("weight_decay"))
        return real_adamw(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    m = pretrain_persona_model(w, num_steps=2, d_model=8, seed=5, verbose=False)
    assert seeds == [5, 5] and not m.training and decays == [0.01]
    monkeypatch.setattr(torch.optim, "AdamW", real_adamw)
    (path,) = tmp_path.glob("persona_*.pt")
    path.write_bytes(b"not a model")  # a cached entry that cannot be read
    fresh = pretrain_persona_model(w, num_steps=2, d_model=8, seed=5, verbose=False, cache=False)
    assert torch.equal(fresh.tok.weight, m.tok.weight)  # trained again, same seed, same model
    assert path.read_bytes() == b"not a model"  # and not written
    monkeypatch.setattr(w, "sample_documents", real)
    one = pretrain_persona_model(w, num_steps=2, d_model=8, n_layers=1, verbose=False)
    rows, _ = run_persona_methods(one, w, num_steps=2, id_steps=2, shift_docs=20,
                                  methods=("GRASP (residual shift + pull-back)",))  # fmt: skip
    assert rows[-1]["method"] == "GRASP (residual shift + pull-back)"


def test_residual_shift_by_hand_on_the_gpt2_layout():
    """Recomputed from hooked block outputs: the mean shift's direction and norm, then (k = 3)
    the principal directions of the shifts with the mean projected out, in descending order,
    with the square roots of their eigenvalues; summed over every batch (7 documents each);
    the pull-back column carries the last block's mean-shift norm. GPT-2's ``transformer.h``
    is found by default, and both models' training modes are restored."""
    torch.manual_seed(0)
    base = _HFStandIn(outer="transformer", embed="wte", layers="h")  # GPT-2's layout
    tuned = copy.deepcopy(base)
    add_lora(tuned, ["up_proj", "down_proj"], rank=4)
    with torch.no_grad():
        for f in lora_modules(tuned):
            f.B.normal_(0.0, 0.3)
    tokens = torch.randint(0, 12, (40, 6), generator=torch.Generator().manual_seed(2))

    def outputs(m):
        outs = []
        hooks = [
            layer.register_forward_hook(lambda mod, i, o: outs.append(o[0].double()))
            for layer in m.transformer.h
        ]
        with torch.no_grad():
            m(tokens)
        for h in hooks:
            h.remove()
        return outs

    shifts = [(a - b).reshape(-1, 8) for a, b in zip(outputs(tuned), outputs(base))]
    base.train(), tuned.train()
    dirs = residual_shift_directions(tuned, base, tokens, k=3, batch_size=7)
    assert base.training and tuned.training
    eye = torch.eye(8, dtype=torch.float64)
    for b, s in enumerate(shifts):
        name = f"transformer.h.{b}.down_proj"
        mean = s.mean(0)
        u = mean / mean.norm()
        P = eye - torch.outer(u, u)
        evals, evecs = torch.linalg.eigh(P @ (s.T @ s / s.shape[0]) @ P)
        U, S = dirs.directions[name].double(), dirs.singular_values[name].double()
        assert torch.allclose(U[:, 0], u, atol=1e-5)
        assert abs(float(U[:, 1] @ evecs[:, -1])) == pytest.approx(1.0, abs=1e-4)
        assert abs(float(U[:, 2] @ evecs[:, -2])) == pytest.approx(1.0, abs=1e-4)
        want = torch.stack([mean.norm(), evals[-1].sqrt(), evals[-2].sqrt()])
        assert torch.allclose(S, want, rtol=1e-4)
    pb = residual_shift_directions(tuned, base, tokens, pull_back=True, batch_size=7)
    assert base.training and tuned.training  # the pull-back's pass through base too
    last = float(shifts[1].mean(0).norm())
    assert float(pb.singular_values["transformer.h.0.down_proj"][-1]) == pytest.approx(
        last, rel=1e-4
    )


def test_grasp_options_act_where_documented():
    """Each GRASP option where it binds: float64 adapters are projected in float64, ``alpha``
    lies in [0, 1], ``modules`` restricts the projection, ``per_head`` needs a head width,
    the soft strength holds on the half-precision path too, and ``finetune_lora`` reports
    the projection time of its own run."""
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, context=12,
                       ffn={"kind": "gelu"})  # fmt: skip
    u = torch.randn(16, dtype=torch.float64)
    u = u / u.norm()
    lm = TinyLM(cfg).double()
    add_lora(lm, ["attn.o.linear", "ffn.down"], rank=2)
    for f in lora_modules(lm):
        f.B.data.normal_()
    before = {f.name: f.B.detach().clone() for f in lora_modules(lm)}
    GRASP(u, modules=["blocks.0.ffn.down"]).project(lm)
    for f in lora_modules(lm):  # only the named module moved
        assert torch.equal(f.B, before[f.name]) == (f.name != "blocks.0.ffn.down")
    g = GRASP(u)
    g.project(lm)
    assert g.violation(lm) < 1e-13  # float64 round-off, not float32's
    for alpha in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            GRASP(u, mode="soft", alpha=alpha)

    class Attn(nn.Module):  # equal widths, and no head count to read a head width from
        def __init__(self):
            super().__init__()
            self.v, self.o = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)

    m = nn.Module()
    m.attn = Attn()
    add_lora(m, ["attn.v"], rank=2)
    with pytest.raises(ValueError, match="per_head: no head width on 'attn.v'"):
        GRASP(torch.randn(8), through={"attn.v": "attn.o"}, per_head=True).project(m)

    half = TinyLM(cfg).to(torch.bfloat16)
    add_lora(half, ["attn.o.linear"], rank=2)
    for f in lora_modules(half):
        f.B.data.normal_()
    B0 = {f.name: f.B.detach().float().clone() for f in lora_modules(half)}
    uf = u.float()
    GRASP(uf, mode="soft", alpha=0.25).project(half)
    for f in lora_modules(half):  # the part along u scaled by 1 - alpha, to bf16 round-off
        want = 0.75 * (uf @ B0[f.name])
        assert torch.allclose(uf @ f.B.float(), want, atol=2e-2 * float(B0[f.name].abs().max()))

    def sampler(gen):
        t = torch.randint(0, 20, (4, 13), generator=gen)
        return t[:, :-1], t[:, 1:]

    g.seconds = 1e6  # left from an earlier run: finetune_lora starts its own count
    out = finetune_lora(lm, sampler, num_steps=2, grasp=g, verbose=False)
    assert 0 < out["projection_seconds"] < out["seconds"] + 1.0
    # the adapters train even when the caller froze the whole model, in training mode (a
    # model with dropout would otherwise train without it), and the model ends in eval mode
    lm.requires_grad_(False).eval()
    B_before = [f.B.detach().clone() for f in lora_modules(lm)]
    modes = []

    def loss_fn(model, batch):
        modes.append(model.training)
        return model(*batch)[1]

    finetune_lora(lm, sampler, num_steps=2, lr=1e-2, verbose=False, loss_fn=loss_fn)
    assert modes == [True, True] and not lm.training
    assert all(not torch.equal(f.B, b) for f, b in zip(lora_modules(lm), B_before))
    with pytest.raises(ValueError, match="model has no LoRA parameters; call add_lora first"):
        finetune_lora(nn.Linear(2, 2), sampler, num_steps=1, verbose=False)


def test_violation_is_the_worst_module_and_finetuning_has_no_weight_decay():
    """``violation`` is the largest over every constrained module (not the last one's), and
    ``finetune_lora``'s AdamW has no weight decay: a loss with zero gradient leaves every
    adapter weight where it was (a decay would shrink A at each step)."""
    from probml.models.adapters import lora_parameters

    lm = _tiny_lm()
    add_lora(lm, ["ffn.down"], rank=2)
    with torch.no_grad():
        for f in lora_modules(lm):
            f.B.normal_(generator=torch.Generator().manual_seed(0))
    u = torch.randn(16)
    g = GRASP(u / u.norm())
    g.project(lm)
    assert g.violation(lm) < 1e-6
    first = next(iter(lora_modules(lm)))  # blocks.0: not the last module visited
    with torch.no_grad():
        first.B.add_(torch.outer(u / u.norm(), torch.ones(2)))
    assert g.violation(lm) > 0.1
    before = [p.detach().clone() for p in lora_parameters(lm)]
    finetune_lora(
        lm, lambda gen: None, num_steps=3, verbose=False,
        loss_fn=lambda m, batch: sum((0.0 * p).sum() for p in lora_parameters(m)),
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, lora_parameters(lm)))
