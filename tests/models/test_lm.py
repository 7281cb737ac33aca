import pytest
import torch

from probml.models.layers import ScaleVector
from probml.models.lm import TinyLM, TinyLMConfig


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"ffn": {"kind": "moa"}},
        {"ffn": {"kind": "la", "variant": "quadratic"}},
        {"norm_scale": False},
        {
            "qk_norm": True,
            "branch_scales": True,
            "placement": "dnp",
            "scale_reparam": "magnitude_direction",
        },
        {"placement": "dp", "norm": "layer"},
    ],
)
def test_tinylm_forward_backward_and_causality(kw):
    torch.manual_seed(0)
    m = TinyLM(TinyLMConfig(vocab_size=20, d_model=32, n_layers=2, n_heads=4, context=16, **kw))
    x = torch.randint(0, 20, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 20) and torch.isfinite(loss)
    loss.backward()
    # causal: changing a future token leaves earlier logits unchanged
    x2 = x.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 20
    assert torch.allclose(m(x)[:, :10], m(x2)[:, :10], atol=1e-6)
    with pytest.raises(ValueError, match="context"):
        m(torch.randint(0, 20, (1, 17)))
    for bad in (20, -1):  # torch's own message names neither the argument nor the size
        with pytest.raises(
            ValueError, match=r"token ids in \[-?\d+, \d+\] but the model's vocab_size is 20"
        ):
            m(torch.where(x == x[0, 0], bad, x))


def test_roles_and_save_load(tmp_path):
    cfg = TinyLMConfig(
        vocab_size=10,
        d_model=16,
        n_layers=1,
        n_heads=2,
        context=8,
        qk_norm=True,
        branch_scales=True,
        placement="dp",
    )
    m = TinyLM(cfg)
    roles = {n: mod.role for n, mod in m.named_modules() if isinstance(mod, ScaleVector)}
    assert (
        roles["blocks.0.attn.q_norm.scale"] == "output"
        and roles["blocks.0.attn.q_scale"] == "input"
    )
    assert roles["blocks.0.attn.o.pre"] == "input" and roles["blocks.0.attn.o.post"] == "output"
    assert roles["norm_f.scale"] == "input"
    p = tmp_path / "m.pt"
    m.save(p)
    m2 = TinyLM.load(p)
    x = torch.randint(0, 10, (2, 8))
    assert torch.equal(m(x), m2(x))
    with pytest.raises(ValueError, match="divisible"):
        TinyLMConfig(vocab_size=10, d_model=10, n_heads=3)
    for kw, name in (({"vocab_size": 0}, "vocab_size"), ({"n_heads": 0}, "n_heads"),
                     ({"context": 0}, "context"), ({"n_layers": -1}, "n_layers"),
                     ({"d_ff": 0}, "d_ff")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            TinyLMConfig(**{"vocab_size": 10, **kw})
    # every field is named where it is wrong (before: "kind must be ...", a torch TypeError,
    # "dictionary update sequence ...", or a string taken for True)
    for kw, err, match in (
        ({"norm": "batch"}, ValueError, "norm must be one of"),
        ({"placement": "pre"}, ValueError, "placement must be one of"),
        ({"scale_reparam": "x"}, ValueError, "scale_reparam must be one of"),
        ({"d_model": 64.0}, TypeError, "d_model must be an integer"),
        ({"ffn": "gelu"}, TypeError, "ffn must be a dict"),
        ({"tie_embeddings": "no"}, TypeError, "tie_embeddings must be True or False"),
    ):
        with pytest.raises(err, match=match):
            TinyLMConfig(**{"vocab_size": 10, **kw})
    with pytest.raises(ValueError, match="B x T"):
        m(x.float())
    with pytest.raises(ValueError, match="B x T"):
        m(x[0])


def test_a_model_without_blocks_is_embedding_position_final_norm_and_tied_head():
    """With no blocks the logits are Norm(E[idx] + P[t]) E^T (tied head): token and position
    embeddings both enter, and the final norm's scale with them."""
    torch.manual_seed(0)
    m = TinyLM(TinyLMConfig(vocab_size=11, d_model=8, n_layers=0, n_heads=2, context=6))
    with torch.no_grad():
        m.norm_f.scale.alpha.uniform_(0.5, 2.0)
    idx = torch.randint(0, 11, (2, 6))
    h = m.tok.weight[idx] + m.pos.weight[:6]
    h = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * m.norm_f.scale.alpha
    assert torch.allclose(m(idx), h @ m.tok.weight.T, atol=1e-5)


def test_attention_by_hand_with_separate_query_and_key_norms():
    """Causal softmax attention over heads, with q and k each RMS-normalised per head by its
    own scale (set unequal here; both start at one)."""
    torch.manual_seed(1)
    cfg = TinyLMConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, context=5, qk_norm=True)
    att = TinyLM(cfg).blocks[0].attn
    with torch.no_grad():
        att.q_norm.scale.alpha.uniform_(0.5, 2.0)
        att.k_norm.scale.alpha.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, 8)

    def heads(y):
        return y.view(3, 5, 2, 4).transpose(1, 2)

    def rms(y, s):
        return y / y.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * s

    q = rms(heads(x @ att.q.weight.T), att.q_norm.scale.alpha)
    k = rms(heads(x @ att.k.weight.T), att.k_norm.scale.alpha)
    v = heads(x @ att.v.weight.T)
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(head dim 4)
    scores = scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8)
    assert torch.allclose(att(x), y @ att.o.linear.weight.T, atol=1e-5)


def test_config_defaults_and_initialisation():
    """d_ff defaults to 8/3 d rounded to a multiple of 16; MoA gates start at zero (an equal
    mixture); with branch scales the blocks' shared pre-norms carry no scale of their own."""
    assert TinyLMConfig(vocab_size=5, d_model=48).d_ff == 128
    assert TinyLMConfig(vocab_size=5, d_model=64).d_ff == 176  # 170.7 -> 11 x 16
    torch.manual_seed(0)
    moa = TinyLM(TinyLMConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2, ffn={"kind": "moa"}))
    gates = [p for n, p in moa.named_parameters() if "gate_proj" in n]
    assert gates and all(bool((p == 0).all()) for p in gates)
    assert all(
        bool(p.detach().abs().sum() > 0)
        for n, p in moa.named_parameters()
        if "gate_proj" not in n and p.dim() == 2
    )
    br = TinyLM(TinyLMConfig(vocab_size=5, d_model=16, n_layers=1, n_heads=2, branch_scales=True))
    blk = br.blocks[0]
    assert blk.norm1.scale is None and blk.norm2.scale is None
    assert blk.attn.q_scale is not None


def test_block_formula_branch_scales_placement_and_init_scale(tmp_path):
    """A block is x1 = x + Attn(Norm_1 x), then x1 + FFN(Norm_2 x1) (checked with the two
    norms' scales made different); with branch scales the value branch has its own input
    scale (zeroing it silences attention); under a placement the LA / MoA FFNs end with the
    placement's scaled map; linear weights start at N(0, 0.02^2); ``load`` honours
    ``map_location``."""
    from probml.models.layers import ScaledLinear

    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2, context=8)
    blk = TinyLM(cfg).blocks[0]
    with torch.no_grad():
        blk.norm1.scale.alpha.uniform_(0.5, 1.5)
        blk.norm2.scale.alpha.uniform_(-2.0, 2.0)
        x = torch.randn(3, 5, 16)
        x1 = x + blk.attn(blk.norm1(x))
        assert torch.allclose(blk(x), x1 + blk.ffn(blk.norm2(x1)), atol=1e-6)
    br = TinyLM(TinyLMConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2, branch_scales=True))
    attn = br.blocks[0].attn
    assert all(isinstance(s, ScaleVector) for s in (attn.q_scale, attn.k_scale, attn.v_scale))
    with torch.no_grad():
        attn.v_scale.alpha.zero_()
        assert torch.equal(attn(torch.randn(2, 4, 16)), torch.zeros(2, 4, 16))
    for kind in ("la", "moa"):
        m = TinyLM(TinyLMConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2,
                                placement="dp", ffn={"kind": kind}))  # fmt: skip
        assert isinstance(m.blocks[0].ffn.w3, ScaledLinear) and m.blocks[0].ffn.w3.placement == "dp"
    big = TinyLM(TinyLMConfig(vocab_size=7, d_model=128, n_layers=1, n_heads=4))
    w = torch.cat([big.blocks[0].attn.q.weight.flatten(), big.blocks[0].ffn.up.weight.flatten()])
    assert float(w.detach().std()) == pytest.approx(0.02, rel=0.05)
    path = tmp_path / "m.pt"
    big.save(path)
    seen = []
    TinyLM.load(path, map_location=lambda storage, loc: seen.append(loc) or storage)
    assert seen and set(seen) == {"cpu"}


def test_load_is_strict_and_the_factory_applies_its_overrides(tmp_path):
    """``load`` refuses weights that do not fit the saved config (a missing tensor), and
    ``tinylm_factory``'s overrides reach the config."""
    from probml.models.lm import tinylm_factory

    m = tinylm_factory(d_model=16, n_heads=2, n_layers=1, context=8)(11)
    assert (m.cfg.vocab_size, m.cfg.d_model, m.cfg.n_heads, m.cfg.n_layers) == (11, 16, 2, 1)
    m.save(tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    del blob["state"]["norm_f.scale.alpha"]
    torch.save(blob, tmp_path / "short.pt")
    with pytest.raises(RuntimeError, match="norm_f.scale.alpha"):
        TinyLM.load(tmp_path / "short.pt")


def test_ffn_kind_defaults_to_swiglu_and_load_reads_plain_data_only(tmp_path):
    """An ``ffn`` dict without ``"kind"`` builds the SwiGLU FFN (its arguments go there);
    ``load`` uses ``weights_only`` loading, so a file holding an arbitrary pickled object is
    refused rather than executed."""
    import argparse

    from probml.models.layers import SwiGLUFFN

    m = TinyLM(TinyLMConfig(vocab_size=7, d_model=16, n_heads=2, n_layers=1, d_ff=32, ffn={}))
    assert type(m.blocks[0].ffn) is SwiGLUFFN
    m.save(tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob["extra"] = argparse.Namespace(a=1)  # not plain data: needs the full unpickler
    torch.save(blob, tmp_path / "odd.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        TinyLM.load(tmp_path / "odd.pt")
