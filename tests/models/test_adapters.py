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
    with pytest.raises(ValueError, match="no nn.Linear matched"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), ["q"])


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
