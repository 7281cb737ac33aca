import math

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from probml.models.adapters import LoRALinear, add_lora, module_side, spurious_factor_model


def test_module_side_skips_wrapper_names():
    """The side is read from the last name component that is not a wrapper (``linear``,
    ``base``, ``base_layer``): PEFT's ``down_proj.base_layer`` still writes."""
    assert module_side("model.layers.0.mlp.down_proj.base_layer") == "write"
    assert module_side("blocks.1.attn.o.linear.base") == "write"
    assert module_side("blocks.1.attn.o.linear") == "write"
    assert module_side("model.layers.0.self_attn.q_proj.base_layer") == "read"
    assert module_side("blocks.0.ffn.w3", write_names=("w1",)) == "read"


def test_add_lora_targets_match_whole_name_components():
    """A target matches at the end of the dotted name and at a component boundary: ``q``
    adapts ``attn.q`` and not ``attn.seq`` (a bare suffix match would take both)."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.seq = nn.Linear(4, 4), nn.Linear(4, 4)

    m = nn.Sequential()
    m.attn = Attn()
    assert add_lora(m, ["q"], rank=2) == ["attn.q"]
    assert isinstance(m.attn.q, LoRALinear) and isinstance(m.attn.seq, nn.Linear)
    unmatched = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        add_lora(unmatched, ["q"])
    # a failed call leaves the model as it was (it froze every parameter first)
    assert all(p.requires_grad for p in unmatched.parameters())
    # one string is not a list: each character was a pattern ("." any one-letter name)
    with pytest.raises(TypeError, match="targets must be a list"):
        add_lora(m, "attn.q")
    assert add_lora(m, iter(["seq"])) == ["attn.seq"]  # any iterable of patterns


def test_lora_initialisation_is_kaiming_uniform_like_peft():
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), B = 0, scaling alpha / r."""
    lin = LoRALinear(
        nn.Linear(400, 3), rank=8, alpha=2.0, generator=torch.Generator().manual_seed(0)
    )
    bound = 1 / math.sqrt(400)
    a = lin.lora_A.detach()
    assert float(a.abs().max()) <= bound and float(a.abs().max()) > 0.99 * bound
    assert float(a.var()) == pytest.approx(bound**2 / 3, rel=0.05)  # uniform's variance
    assert bool((lin.lora_B == 0).all()) and lin.scaling == 0.25


def test_spurious_factor_model_mean_is_a_unit_direction_plus_task_loadings():
    """b_j ~ N(lam_j u + T eta_j, sigma^2 I) with u = v / |v| (not v itself)."""
    b = torch.zeros(3, 5)
    pyro.set_rng_seed(0)
    tr = poutine.trace(spurious_factor_model).get_trace(b, num_task=2)
    v, lam = tr.nodes["v"]["value"], tr.nodes["lam"]["value"]
    T, eta = tr.nodes["T"]["value"], tr.nodes["eta"]["value"]
    u = v / v.norm()
    assert torch.allclose(tr.nodes["u"]["value"], u)
    mean = lam[:, None] * u + eta @ T.T
    assert torch.allclose(tr.nodes["b"]["fn"].base_dist.loc, mean, atol=1e-6)
    assert float(tr.nodes["b"]["fn"].base_dist.scale.max()) == float(tr.nodes["sigma"]["value"])
    tr0 = poutine.trace(spurious_factor_model).get_trace(b, num_task=2, shared=False)
    assert "v" not in tr0.nodes
    assert torch.allclose(
        tr0.nodes["b"]["fn"].base_dist.loc,
        tr0.nodes["eta"]["value"] @ tr0.nodes["T"]["value"].T,
    )


def test_lora_freezing_seeding_merging_and_peft_layers_with_several_adapters():
    """LoRALinear freezes its base; add_lora freezes the whole model unless ``freeze=False``
    and seeds the A matrices with ``seed``; merging twice adds the update once (and
    unmerging twice removes it once); a PEFT layer with several adapters and no word on
    which is active is refused by name."""
    from probml.models.adapters import lora_modules, merge_lora, unmerge_lora

    lin = LoRALinear(nn.Linear(3, 2), rank=1)
    assert not any(p.requires_grad for p in lin.base.parameters())

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    m = model()
    add_lora(m, ["1"], rank=2, seed=3)
    assert not m[0].weight.requires_grad and m[1].lora_A.requires_grad
    kept = model()
    add_lora(kept, ["1"], rank=2, seed=3, freeze=False)
    assert kept[0].weight.requires_grad and not kept[1].base.weight.requires_grad
    assert torch.equal(kept[1].lora_A, m[1].lora_A)
    other = model()
    add_lora(other, ["1"], rank=2, seed=4)
    assert not torch.equal(other[1].lora_A, m[1].lora_A)
    with torch.no_grad():
        m[1].lora_B.normal_()
    x = torch.randn(5, 4)
    want, w0 = m(x), m[1].base.weight.clone()
    merge_lora(m)
    merge_lora(m)
    torch.testing.assert_close(m(x), want)
    torch.testing.assert_close(m[1].base.weight, w0 + m[1].delta_weight())
    unmerge_lora(m)
    unmerge_lora(m)
    torch.testing.assert_close(m[1].base.weight, w0)

    class TwoAdapters(nn.Module):  # PEFT's layout without ``active_adapters``
        def __init__(self):
            super().__init__()
            self.lora_A = nn.ModuleDict({"a": nn.Linear(4, 2), "b": nn.Linear(4, 2)})
            self.lora_B = nn.ModuleDict({"a": nn.Linear(2, 4), "b": nn.Linear(2, 4)})

    holder = nn.Sequential()
    holder.down = TwoAdapters()
    with pytest.raises(ValueError, match=r"'down' holds adapters \['a', 'b'\]"):
        list(lora_modules(holder))


def test_spurious_factor_model_and_fit_settings():
    """``loading_scale`` is the prior scale of the loadings; the fit needs J >= 2 update
    vectors and a positive rate, and its detection score averages the last
    ``min(100, num_steps)`` ELBO differences."""
    from probml.models.adapters import fit_spurious_factor

    b = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    tr = poutine.trace(spurious_factor_model).get_trace(b, 2, True, 3.0)
    tr.compute_log_prob()
    lam = tr.nodes["lam"]["value"]
    want = torch.distributions.Normal(0.0, 3.0).log_prob(lam).sum()
    assert torch.allclose(tr.nodes["lam"]["log_prob_sum"], want)
    with pytest.raises(ValueError, match="J >= 2"):
        fit_spurious_factor(b[:1])
    with pytest.raises(ValueError, match="lr"):
        fit_spurious_factor(b, lr=0.0)
    out = fit_spurious_factor(b, num_task=2, num_steps=10, num_samples=5)
    gain = -(sum(out["loss_shared"]) - sum(out["loss_null"])) / 10
    assert len(out["loss_shared"]) == 10 and out["detection"] == pytest.approx(gain)


def test_spurious_factor_fit_refuses_updates_with_no_direction():
    """NaN updates failed inside Pyro's support check at site ``b`` (naming a site, not the
    argument); all-zero updates ran and returned a direction drawn from the prior."""
    from probml.models.adapters import fit_spurious_factor

    bad_b = torch.ones(4, 3)
    bad_b[0, 0] = math.nan
    for b, words in ((bad_b, "b must be finite"), (torch.zeros(4, 3), "b is all zeros")):
        with pytest.raises(ValueError, match=f"^{words}"):
            fit_spurious_factor(b, num_steps=2, num_samples=2)
