"""TinyLM's call convention over a Hugging Face causal language model.

The persona world's metrics and runner (:mod:`probml.datasets.persona`,
:mod:`probml.inference.persona_experiment`) call a model the way TinyLM is called. This
wrapper gives any ``transformers`` causal LM those calls, so the same experiment runs on other
architectures (``benchmarks/grasp_llama.py``). It does not import ``transformers``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probml.utils import module_list

__all__ = ["TinyLMCalls"]


class TinyLMCalls(nn.Module):
    """``model(x) -> logits`` (``N x T x V``), ``model(x, y) -> (logits, loss)`` (mean
    next-token cross-entropy, targets ``-100`` ignored) and ``blocks``, the decoder layers.

    Args:
        hf: a causal LM whose ``forward(input_ids=...)`` returns an object with ``logits``
            and whose decoder layers are ``hf.model.layers`` (Llama, Mistral, Qwen2, ...), or
            the module list named by ``layers``.
        layers: the dotted name of the decoder layers inside ``hf``.
    """

    def __init__(self, hf: nn.Module, layers: str = "model.layers"):
        super().__init__()
        blocks = module_list(hf, layers, "layers")
        self.hf = hf
        self.blocks = blocks  # the same modules; named_modules lists them once, under hf

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.hf(input_ids=x).logits
        if y is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
