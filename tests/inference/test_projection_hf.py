"""GRASP on a real Hugging Face decoder with PEFT LoRA adapters (optional peers).

A tiny randomly initialised Llama (built from a config in code: nothing is downloaded) wrapped
by ``peft.get_peft_model``. Needs ``transformers`` and ``peft``, the ``hf`` extra that ``make``
installs; skipped where they are absent. The CUDA cases run where a GPU is present.
"""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from probml.inference.projection import (  # noqa: E402
    GRASP,
    HF_THROUGH,
    ResidualIntervention,
    finetune_lora,
    identify_spurious_directions,
    residual_shift_directions,
)
from probml.models.adapters import add_lora, lora_modules  # noqa: E402

D, VOCAB = 32, 50
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _llama(kv_heads: int, device: str, seed: int = 0, init: float = 0.02):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32,
        attn_implementation="eager", initializer_range=init,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).to(device).eval()


def _peft(model, targets, seed: int = 1):
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights="gaussian")
    return peft.get_peft_model(copy.deepcopy(model), cfg)


def _unit(seed: int, device: str) -> torch.Tensor:
    u = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return (u / u.norm()).to(device)


def _attn_out(model, tokens) -> torch.Tensor:
    """Layer 0's attention output (what it adds to the residual stream)."""
    out = []
    attn = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn"))
    h = attn.register_forward_hook(lambda m, i, o: out.append(o[0].detach()))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        h.remove()
    return out[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_grasp_on_a_peft_llama_keeps_writes_off_u(device, kv_heads):
    base = _llama(kv_heads, device)
    model = _peft(base, ["q_proj", "v_proj", "o_proj", "down_proj"])
    facts = {f.name.split("model.layers.")[-1]: f for f in lora_modules(model)}
    assert len(facts) == 8
    assert facts["0.self_attn.o_proj"].side == "write" and facts["1.mlp.down_proj"].side == "write"
    assert facts["0.self_attn.q_proj"].side == "read" and facts["0.self_attn.v_proj"].side == "read"
    assert all(f.scaling == 2.0 for f in facts.values())  # lora_alpha / r
    assert facts["0.self_attn.v_proj"].B.shape[0] == D * kv_heads // 4
    u = _unit(0, device)
    g = GRASP(u, through=HF_THROUGH, per_head=True)
    g.init(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(15):  # the user's own loop: project after every optimizer step
        x = torch.randint(0, VOCAB, (4, 12), generator=gen).to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        g.project(model)
    model.eval()
    assert g.violation(model) < 1e-6
    v_name = next(f.name for f in lora_modules(model) if f.name.endswith("0.self_attn.v_proj"))
    side, basis = g._cache[v_name]
    assert side == "through" and basis.shape == (D * kv_heads // 4, 4)  # one per query head
    # functional check: with the query adapters zeroed, layer 0's attention (same input, same
    # pattern) adds nothing along u, through the value adapter included (grouped heads too)
    for f in lora_modules(model):
        if f.name.endswith("q_proj"):
            f.B.data.zero_()
    tokens = torch.randint(0, VOCAB, (3, 10), generator=gen).to(device)
    with model.disable_adapter():
        before = _attn_out(model, tokens)
    delta = _attn_out(model, tokens) - before
    assert delta.norm() > 1e-2  # the adapters did change the attention output
    assert float((delta @ u).abs().max()) < 1e-5

    def leak(grasp):  # a fresh value adapter, projected, then its largest write along u
        for f in lora_modules(model):
            if f.name.endswith("v_proj"):
                f.B.data.copy_(torch.randn(f.B.shape, generator=torch.Generator().manual_seed(3)))
        grasp.project(model)
        return ((_attn_out(model, tokens) - before) @ u).abs()

    assert float(leak(g).max()) < 1e-5
    # the summed rule U^T W_o dW_v = 0 holds and is exact at the first position (every head
    # attends to it alone) but leaks where the heads' patterns differ; no rule leaks more
    summed = GRASP(u, through=HF_THROUGH)
    assert summed._side_basis(model, next(f for f in lora_modules(model) if f.name == v_name))[
        1
    ].shape == (D * kv_heads // 4, 1)
    out = leak(summed)
    assert summed.violation(model) < 1e-5
    assert float(out[:, 0].max()) < 1e-5 and float(out.max()) > 1e-3
    assert float(leak(GRASP(u)).max()) > float(out.max())


def test_identification_on_a_peft_llama_with_grouped_heads():
    base = _llama(2, "cpu")
    model = _peft(base, ["v_proj", "o_proj"])
    with torch.no_grad():  # a trained update: PEFT starts B at zero, and the SVD of a zero
        # Delta W has arbitrary vectors (the comparison below then held for any head mapping)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    dirs = identify_spurious_directions(model, k=1, through=HF_THROUGH)
    name = next(n for n in dirs.directions if n.endswith("layers.0.self_attn.v_proj"))
    assert dirs.sides[name] == "through" and dirs.directions[name].shape == (D, 1)
    f = next(f for f in lora_modules(model) if f.name == name)
    attn = model.get_submodule(name.rsplit(".", 1)[0])
    Wo = attn.o_proj.base_layer.weight  # D x (4 heads x 8): the value enters it repeated
    R = torch.zeros(4 * 8, 2 * 8)
    for q in range(4):  # query head q reads value head q // 2 (transformers' repeat_kv)
        R[q * 8 : (q + 1) * 8, (q // 2) * 8 : (q // 2 + 1) * 8] = torch.eye(8)
    top = torch.linalg.svd((Wo @ R @ f.delta_weight()).detach())[0][:, 0]
    assert abs(float(dirs.directions[name][:, 0] @ top)) > 1 - 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_residual_shift_and_pull_back_on_a_peft_llama(device):
    base = _llama(2, device)
    tuned = _peft(base, ["v_proj", "o_proj", "down_proj"])
    u = _unit(4, device)
    with torch.no_grad():  # layer 0's MLP writes a * u, a = 0.1 * sum(x): a shift along u
        for f in lora_modules(tuned):
            f.B.zero_()
            if f.name.endswith("layers.0.mlp.down_proj"):
                f.B[:, 0] = u / f.scaling
                f.A.zero_()
                f.A[0] = 0.1
    tokens = torch.randint(0, VOCAB, (32, 12), generator=torch.Generator().manual_seed(5))
    dirs = residual_shift_directions(tuned, base, tokens, through=HF_THROUGH, pull_back=True)
    by_layer = {n.split("model.layers.")[-1]: U for n, U in dirs.directions.items()}
    assert set(by_layer) == {f"{i}.{m}" for i in (0, 1)
                             for m in ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")}  # fmt: skip
    for name in ("0.self_attn.v_proj", "0.self_attn.o_proj", "0.mlp.down_proj"):
        U = by_layer[name]
        assert U.shape == (D, 2)  # the mean shift, then the last layer's pulled back
        assert torch.allclose(U.T @ U, torch.eye(2), atol=1e-5)
        assert abs(float(U[:, 0] @ u.cpu())) == pytest.approx(1.0, abs=1e-6)
    assert by_layer["1.mlp.down_proj"].shape == (D, 1)
    # steering hooks handle the decoder layers' outputs: ablation leaves nothing along u
    outs = []
    layers = tuned.get_submodule("base_model.model.model.layers")
    with ResidualIntervention(tuned, u, mode="ablate"), torch.no_grad():
        handles = [lay.register_forward_hook(lambda m, i, o: outs.append(o)) for lay in layers]
        try:  # registered after the intervention's hooks: they see the steered outputs
            tuned(tokens.to(device))
        finally:
            for h in handles:
                h.remove()
    hs = [o[0] if isinstance(o, tuple) else o for o in outs]
    assert len(hs) == 2 and all(float((h @ u).abs().max()) < 1e-5 for h in hs)
    assert all(float(h.norm()) > 1.0 for h in hs)


@pytest.mark.parametrize("device", DEVICES)
def test_finetune_lora_with_a_loss_fn_trains_a_peft_llama_under_grasp(device):
    base = _llama(2, device, init=0.1)  # larger weights than the default: learns faster
    model = _peft(base, ["q_proj", "v_proj", "o_proj", "down_proj"])
    u = _unit(6, device)

    def counting(gen):  # t_{n+1} = t_n + 1 (mod V): learnable in a few steps
        start = torch.randint(0, VOCAB, (8, 1), generator=gen)
        return (start + torch.arange(12)) % VOCAB

    def loss_fn(m, ids):
        ids = ids.to(device)
        return m(input_ids=ids, labels=ids).loss

    g = GRASP(u, through=HF_THROUGH)
    out = finetune_lora(model, counting, num_steps=40, lr=2e-2, grasp=g, verbose=False,
                        loss_fn=loss_fn)  # fmt: skip
    assert g.violation(model) < 1e-6
    assert sum(out["loss"][-5:]) / 5 < sum(out["loss"][:5]) / 5 - 0.5  # about 3.8 -> 2.9
    assert not model.training  # left in eval mode, as for TinyLM


def test_a_peft_model_with_two_adapters_uses_the_active_one():
    base = _llama(2, "cpu")
    model = _peft(base, ["o_proj", "down_proj"])
    model.add_adapter("second", peft.LoraConfig(r=3, lora_alpha=3, target_modules=["o_proj"],
                                                init_lora_weights="gaussian"))  # fmt: skip
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.o_proj")
    f = next(f for f in lora_modules(model) if f.name.endswith("layers.0.self_attn.o_proj"))
    assert f.A is layer.lora_A["default"].weight and f.scaling == 2.0
    assert len(list(lora_modules(model))) == 4  # "default": o_proj and down_proj, 2 layers
    model.set_adapter("second")
    assert [f.name.rsplit(".", 1)[-1] for f in lora_modules(model)] == ["o_proj", "o_proj"]
    f = next(f for f in lora_modules(model) if f.name.endswith("layers.0.self_attn.o_proj"))
    assert f.A is layer.lora_A["second"].weight and f.A.shape == (3, D) and f.scaling == 1.0
    u = _unit(7, "cpu")
    GRASP(u).project(model)
    assert float((u @ layer.lora_B["second"].weight.detach()).abs().max()) < 1e-6
    layer.set_adapter(["default", "second"])  # both active on this layer: ambiguous
    with pytest.raises(ValueError, match="2 of them active"):
        list(lora_modules(model))


def test_tinylm_calls_match_the_hugging_face_loss_and_run_the_persona_experiment(
    tmp_path, monkeypatch
):
    from probml.datasets.persona import PersonaWorld
    from probml.inference.persona_experiment import (
        _oracle_directions,
        pretrain_persona_model,
        run_persona_methods,
    )
    from probml.models.hf import TinyLMCalls

    hf = _llama(2, "cpu")
    m = TinyLMCalls(hf)
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(8))
    logits, loss = m(ids[:, :-1], ids[:, 1:])
    assert logits.shape == (3, 8, VOCAB) and torch.equal(m(ids[:, :-1]), logits)
    with torch.no_grad():  # the same next-token loss as transformers' own shifted labels
        assert torch.allclose(loss, hf(input_ids=ids, labels=ids).loss, atol=1e-6)
        masked = ids.masked_fill(torch.arange(9) < 4, -100)  # targets -100 are ignored
        want = hf(input_ids=ids, labels=masked).loss
        assert torch.allclose(m(ids[:, :-1], masked[:, 1:])[1], want, atol=1e-6)
    assert len(m.blocks) == 2 and m.blocks[0] is hf.model.layers[0]
    with pytest.raises(ValueError, match="layers"):
        TinyLMCalls(hf, layers="model.nothing")

    monkeypatch.setenv("PROBML_CACHE", str(tmp_path))
    w = PersonaWorld()

    def factory():
        cfg = transformers.LlamaConfig(
            vocab_size=w.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        return TinyLMCalls(transformers.LlamaForCausalLM(cfg))

    base = pretrain_persona_model(w, num_steps=5, verbose=False, model_factory=factory)
    assert isinstance(base, TinyLMCalls) and not list(tmp_path.glob("persona_*"))  # not cached
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    methods = ("naive", "GRASP (residual shift + pull-back)", "GRASP (oracle u)")
    rows, diag = run_persona_methods(base, w, num_steps=3, id_steps=2, shift_docs=50,
                                     methods=methods, targets=targets, through=HF_THROUGH)  # fmt: skip
    assert [r["method"] for r in rows] == ["base (pretrained)", "naive",
                                           "naive + inference ablation", *methods[1:]]  # fmt: skip
    assert len(diag["residual_shift_cos_per_block"]) == 2
    assert all(0 <= c <= 1 for c in diag["residual_shift_cos_per_block"])
    tuned = copy.deepcopy(base)
    add_lora(tuned, targets, rank=2)
    oracle = _oracle_directions(tuned, [torch.ones(16) / 4, -torch.ones(16) / 4], HF_THROUGH)
    kinds = sorted({n.rsplit(".", 1)[-1] for n in oracle.directions})
    assert kinds == ["down_proj", "o_proj", "v_proj"]  # writes and the value (through)
    v1 = next(U for n, U in oracle.directions.items() if n.endswith("layers.1.self_attn.v_proj"))
    assert torch.equal(v1[:, 0], -torch.ones(16) / 4)


def test_our_lora_computes_what_peft_computes():
    """Same A, B, rank and alpha: LoRALinear's output and update equal PEFT's, whose scaling
    is alpha / r (a scaling of alpha alone passed every other test, which use alpha = r)."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5))
    ours = copy.deepcopy(base)
    add_lora(ours, ["0"], rank=2, alpha=6.0)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, lora_alpha=6, target_modules=["0"])
    )
    with torch.no_grad():
        ours[0].lora_B.normal_()
        (f,) = lora_modules(theirs)  # the one adapted layer
        f.A.copy_(ours[0].lora_A)
        f.B.copy_(ours[0].lora_B)
    x = torch.randn(4, 6)
    assert ours[0].scaling == f.scaling == 3.0
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert torch.allclose(ours[0].delta_weight(), f.delta_weight(), atol=1e-6)
