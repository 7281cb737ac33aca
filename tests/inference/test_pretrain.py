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
    warmup_cosine,
)
from probml.models.layers import ScaleVector
from probml.models.lm import TinyLM, TinyLMConfig


def _cfg(**kw):
    return TinyLMConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, context=32, **kw)


class _Arm(torch.nn.Module):
    """A stand-in arm for paired_comparison with train_lm replaced: only its name matters."""

    def __init__(self, name):
        super().__init__()
        self.name = name


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
    # vectors that are not scales (MoA gate biases and mixing weights) are never decayed
    moa = TinyLM(_cfg(ffn={"kind": "moa"}))
    scales = {
        id(p) for mod in moa.modules() if isinstance(mod, ScaleVector) for p in mod.parameters()
    }
    others = [p for p in moa.parameters() if p.ndim < 2 and id(p) not in scales]
    assert others
    decay, no_decay = (set(map(id, g["params"])) for g in param_groups(moa, 0.1, "role"))
    assert all(id(p) in no_decay for p in others)


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


def test_schedule_batches_clipping_and_activation_bytes_by_hand(monkeypatch):
    """warmup_cosine: (s + 1) / w while warming up, 1 where the decay starts, 0.55 half way
    and 0.1 at the end. A batch pairs each window with the window one token later. Every
    step clips the gradient to norm 1. activation_bytes counts bytes, not elements: a
    float64 twin needs almost twice the memory (the token ids stay int64)."""
    from probml.inference import pretrain

    f = [warmup_cosine(s, 4, 10) for s in (0, 3, 4, 7, 10)]
    assert f == pytest.approx([0.25, 1.0, 1.0, 0.55, 0.1])
    assert warmup_cosine(0, 0, 10) == 1.0
    x, y = pretrain._batch(torch.arange(100), torch.tensor([0, 10]), 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]
    assert torch.equal(y, x + 1)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    corpus = synthetic_corpus(5_000, vocab=8, seed=0)
    m = TinyLM(TinyLMConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, context=16))
    train_lm(m, corpus, steps=3, batch_size=4, warmup=1, eval_batches=1)
    assert norms == [1.0, 1.0, 1.0]
    idx = torch.randint(0, 40, (2, 32))
    torch.manual_seed(0)
    b32 = activation_bytes(TinyLM(_cfg()), idx)
    torch.manual_seed(0)
    b64 = activation_bytes(TinyLM(_cfg()).double(), idx)
    assert 1.8 * b32 < b64 < 2 * b32


def test_paired_comparison_picks_each_arms_best_rate_and_differences_by_seed(monkeypatch):
    """With train_lm replaced by a table of losses: each arm's best learning rate is the one
    with the lowest mean over seeds, and the paired difference is arm minus first arm, seed
    by seed, at each arm's own best rate."""
    from probml.inference import pretrain

    table = {  # (arm, lr) -> losses for seeds 0, 1
        ("a", 0.1): (3.0, 3.2), ("a", 0.2): (2.9, 3.1),
        ("b", 0.1): (2.5, 2.9), ("b", 0.2): (2.8, 2.8),
    }  # fmt: skip

    def fake_train(model, corpus, lr, batch_seed, verbose, **kw):
        return pretrain.TrainResult(table[model.name, lr][batch_seed], seconds=1.0)

    monkeypatch.setattr(pretrain, "train_lm", fake_train)
    rows, raw = paired_comparison(
        {"a": lambda: _Arm("a"), "b": lambda: _Arm("b")}, corpus=None, seeds=[0, 1], lrs=[0.1, 0.2]
    )
    assert [r["best lr"] for r in rows] == [0.2, 0.1]  # means 3.0 < 3.1; 2.7 < 2.8
    assert rows[1]["val loss"] == pytest.approx(2.7)
    assert rows[1]["paired diff vs a"] == pytest.approx(((2.5 - 2.9) + (2.9 - 3.1)) / 2)
    assert rows[1]["se"] == pytest.approx(0.1)  # differences -0.4 and -0.2
    assert len(raw) == 8


def test_harness_settings_reach_training_and_the_paired_setup(monkeypatch):
    """The documented details: corpora need 1000 characters and sort their vocabulary;
    frozen parameters are in no group; every arm is built from the seed itself (its own
    parameters are those of a fresh seeded build) and only same-shape entries are copied;
    AdamW runs with betas (0.9, 0.95); the batch order follows ``batch_seed``; warm-up 0
    is allowed, a negative rate is not; the model comes back in training mode; a window must
    fit strictly inside the validation split (context + 2 tokens)."""
    with pytest.raises(ValueError, match="corpus too small"):
        pydoc_corpus(max_chars=999)
    with pytest.raises(ValueError, match="n_chars"):
        synthetic_corpus(999)
    c = pydoc_corpus(max_chars=3000)
    assert c.vocab == sorted(c.vocab)
    m = TinyLM(_cfg())
    m.tok.weight.requires_grad_(False)
    grouped = {id(p) for g in param_groups(m, 0.1) for p in g["params"]}
    assert id(m.tok.weight) not in grouped and len(grouped) == len(list(m.parameters())) - 1
    moa_cfg = _cfg(ffn={"kind": "moa"})
    wide_cfg = TinyLMConfig(vocab_size=40, d_model=48, n_layers=2, n_heads=4, context=32)
    arms = paired_models(
        {"a": lambda: TinyLM(_cfg()), "moa": lambda: TinyLM(moa_cfg), "wide": lambda: TinyLM(wide_cfg)},
        seed=3,
    )  # fmt: skip
    for name, cfg in (("moa", moa_cfg), ("wide", wide_cfg)):
        torch.manual_seed(3)
        fresh, ref = TinyLM(cfg).state_dict(), arms["a"].state_dict()
        for k, v in arms[name].state_dict().items():
            if k not in ref or ref[k].shape != v.shape:
                assert torch.equal(v, fresh[k]), (name, k)
    assert arms["wide"].tok.weight.shape[1] == 48
    betas, real = [], torch.optim.AdamW

    class AdamW(real):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            betas.append(self.defaults["betas"])

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)
    corpus = synthetic_corpus(5_000, vocab=8, seed=0)

    def run(batch_seed, **kw):
        torch.manual_seed(0)
        model = TinyLM(TinyLMConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, context=16))
        kw = {"steps": 3, "batch_size": 4, "warmup": 0, "eval_batches": 1, **kw}
        return model, train_lm(model, corpus, batch_seed=batch_seed, **kw)

    model, r0 = run(0)
    assert betas == [(0.9, 0.95)] and model.training
    assert run(0)[1].train_curve == r0.train_curve != run(1)[1].train_curve
    with pytest.raises(ValueError, match="lr"):
        run(0, lr=-1e-3)
    short = pydoc_corpus(max_chars=1500)  # 150 validation characters
    cfg = TinyLMConfig(vocab_size=short.vocab_size, d_model=16, n_layers=1, n_heads=2, context=149)
    with pytest.raises(ValueError, match=r"context \+ 2 = 151"):
        train_lm(TinyLM(cfg), short, steps=1, batch_size=2)


def test_paired_comparison_means_over_seeds_with_per_arm_rates(monkeypatch):
    """Three seeds with a skewed loss (mean differs from median) and seconds that vary; the
    arms have sweeps of different lengths (``lrs`` as a dict)."""
    from probml.inference import pretrain

    table = {("a", 0.1): (3.0, 3.0, 3.6), ("b", 0.1): (2.0, 2.1, 2.9), ("b", 0.3): (3.0,) * 3}

    def fake_train(model, corpus, lr, batch_seed, verbose, **kw):
        return pretrain.TrainResult(table[model.name, lr][batch_seed], seconds=batch_seed + 1.0)

    monkeypatch.setattr(pretrain, "train_lm", fake_train)
    rows, raw = paired_comparison(
        {"a": lambda: _Arm("a"), "b": lambda: _Arm("b")}, None, [0, 1, 2], {"a": [0.1], "b": [0.1, 0.3]}
    )  # fmt: skip
    assert len(raw) == 9 and [r["best lr"] for r in rows] == [0.1, 0.1]
    assert rows[0]["val loss"] == pytest.approx(3.2) and rows[1]["val loss"] == pytest.approx(7 / 3)
    assert rows[1]["seconds/run"] == pytest.approx(2.0)


def test_synthetic_source_groups_schedule_validation_split_and_sweep_starts(monkeypatch):
    """The synthetic source gives each context (a, b) at most ``branching`` successors and
    uses several of them; every matrix is decayed under both rules (at the given weight
    decay, the rest at 0); a corpus with one symbol more than the model's vocabulary is
    refused; ``train_lm`` steps the warm-up/cosine schedule once per step and scores the
    validation split; each rate of a sweep starts from the seed's initial weights."""
    from probml.inference import pretrain

    c = synthetic_corpus(20_000, vocab=6, branching=3, seed=1)
    seq = torch.cat([c.train, c.val])
    ctx = seq[:-2] * 6 + seq[1:-1]
    succ = [seq[2:][ctx == k].unique().numel() for k in ctx.unique().tolist()]
    assert max(succ) <= 3 and sum(succ) / len(succ) > 2  # 2.67 at this seed; 1 if fixed
    m = TinyLM(_cfg(qk_norm=True))
    for rule in ("role", "ndim"):
        decay, no_decay = param_groups(m, 0.3, rule)
        ids = set(map(id, decay["params"]))
        assert all(id(p) in ids for p in m.parameters() if p.ndim >= 2), rule
        assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    corpus = synthetic_corpus(5_000, vocab=8, seed=0)
    small = TinyLM(TinyLMConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2, context=8))
    with pytest.raises(ValueError, match="corpus has 8 symbols but the model's vocab_size is 7"):
        train_lm(small, corpus, steps=1, batch_size=2)
    lrs, scored = [], []
    real_step, real_eval = torch.optim.AdamW.step, pretrain._evaluate

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    def evaluate(model, data, *rest):
        scored.append(data)
        return real_eval(model, data, *rest)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(pretrain, "_evaluate", evaluate)
    m = TinyLM(TinyLMConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, context=16))
    train_lm(m, corpus, steps=4, batch_size=2, lr=1e-3, warmup=2, eval_batches=1)
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.55e-3])
    assert len(scored) == 1 and scored[0] is corpus.val
    # every learning rate of a sweep starts from the seed's initial weights, not from the
    # weights the previous rate trained
    starts = {}

    def fake_train(model, corpus, lr, batch_seed, verbose, **kw):
        starts[lr] = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # "training" moves every weight
        return pretrain.TrainResult(1.0)

    monkeypatch.setattr(pretrain, "train_lm", fake_train)
    paired_comparison({"a": lambda: TinyLM(_cfg())}, corpus, seeds=[0], lrs=[0.1, 0.2])
    assert all(torch.equal(a, b) for a, b in zip(starts[0.1], starts[0.2]))
