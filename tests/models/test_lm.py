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
