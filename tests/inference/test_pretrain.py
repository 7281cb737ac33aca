import pytest
import torch

from probml.inference.pretrain import (
    activation_bytes,
    paired_comparison,
    paired_models,
    param_groups,
    pydoc_corpus,
    synthetic_corpus,
    train_lm,
)
from probml.models.layers import ScaleVector
from probml.models.lm import TinyLM, TinyLMConfig


def _cfg(**kw):
    return TinyLMConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, context=32, **kw)


def test_param_groups_role_rule():
    m = TinyLM(
        _cfg(qk_norm=True, branch_scales=True, placement="dnp", scale_reparam="magnitude_direction")
    )
    for rule in ("role", "ndim"):
        decay, no_decay = (set(map(id, g["params"])) for g in param_groups(m, 0.1, rule))
        all_ids = {id(p) for p in m.parameters()}
        assert decay.isdisjoint(no_decay) and decay | no_decay == all_ids
        for mod in m.modules():
            if isinstance(mod, ScaleVector):
                ids = {id(p) for p in mod.parameters()}
                if rule == "role" and mod.role == "input":
                    assert ids <= decay
                else:
                    assert ids <= no_decay
    assert any(isinstance(mod, ScaleVector) and mod.role == "output" for mod in m.modules())


def test_paired_models_share_initial_weights():
    arms = {"swiglu": lambda: TinyLM(_cfg()), "moa": lambda: TinyLM(_cfg(ffn={"kind": "moa"}))}
    ms = paired_models(arms, seed=3)
    a, b = ms["swiglu"].state_dict(), ms["moa"].state_dict()
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    assert len(shared) > 10
    assert all(torch.equal(a[k], b[k]) for k in shared)
    again = paired_models(arms, seed=3)["moa"].state_dict()
    assert all(torch.equal(again[k], b[k]) for k in b)


def test_training_lowers_loss_and_harness_runs():
    corpus = synthetic_corpus(20_000, vocab=16, seed=0)
    torch.manual_seed(0)
    m = TinyLM(
        TinyLMConfig(vocab_size=corpus.vocab_size, d_model=32, n_layers=1, n_heads=2, context=32)
    )
    res = train_lm(m, corpus, steps=150, batch_size=16, lr=1e-2, warmup=5, eval_batches=4)
    assert res.train_curve[-1] < res.train_curve[0] - 0.5
    assert res.val_loss < 2.77 - 0.3  # well below the uniform log(16)
    arms = {
        "base": lambda: TinyLM(
            TinyLMConfig(
                vocab_size=corpus.vocab_size, d_model=32, n_layers=1, n_heads=2, context=32
            )
        ),
        "nogamma": lambda: TinyLM(
            TinyLMConfig(
                vocab_size=corpus.vocab_size,
                d_model=32,
                n_layers=1,
                n_heads=2,
                context=32,
                norm_scale=False,
            )
        ),
    }
    lines = []
    rows, raw = paired_comparison(
        arms, corpus, seeds=[0, 1], lrs=[3e-3], steps=5, batch_size=8, warmup=2, eval_batches=2,
        log=lines.append,
    )  # fmt: skip
    assert [r["arm"] for r in rows] == ["base", "nogamma"] and rows[0]["paired diff vs base"] == 0.0
    assert len(raw) == 4
    # one progress line per run, naming its seed, arm, learning rate and validation loss
    assert len(lines) == 4 and lines[1].startswith("seed 0, nogamma, lr 0.003: val loss ")
    assert f"{raw['nogamma', 3e-3, 0].val_loss:.4f}" in lines[1]


def test_corpora_and_activation_memory():
    c = pydoc_corpus(max_chars=50_000)
    assert len(c.train) == 45_000 and len(c.val) == 5_000
    x = torch.randint(0, 40, (2, 32))
    base = activation_bytes(TinyLM(_cfg()), x)
    moa = activation_bytes(TinyLM(_cfg(ffn={"kind": "moa"})), x)
    moa_ck = TinyLM(_cfg(ffn={"kind": "moa", "checkpointing": True}))
    assert moa > base and activation_bytes(moa_ck, x) < moa


def test_train_lm_refuses_a_corpus_it_cannot_use_before_training():
    """A validation split shorter than one window used to fail only after every training
    step (inside torch.randint, naming nothing); a corpus with more symbols than the model's
    vocabulary failed inside the embedding. Both are refused before the first step."""
    corpus = pydoc_corpus(max_chars=1500)  # 1350 train and 150 validation characters
    long_context = TinyLM(
        TinyLMConfig(vocab_size=corpus.vocab_size, d_model=16, n_layers=1, n_heads=2, context=160)
    )
    before = [p.detach().clone() for p in long_context.parameters()]
    with pytest.raises(ValueError, match=r"corpus.val has 150 tokens.*context \+ 2 = 162"):
        train_lm(long_context, corpus, steps=3, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(before, long_context.parameters()))
    small_vocab = TinyLM(TinyLMConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2, context=8))
    with pytest.raises(ValueError, match="vocab_size is 10"):
        train_lm(small_vocab, corpus, steps=3, batch_size=2)
    fits = TinyLM(
        TinyLMConfig(vocab_size=corpus.vocab_size, d_model=16, n_layers=1, n_heads=2, context=148)
    )  # the largest context the 150-token validation split takes
    assert train_lm(fits, corpus, steps=2, batch_size=2, eval_batches=1).steps == 2
