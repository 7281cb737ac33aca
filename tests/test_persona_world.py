"""The planted-persona worlds' generative rules, checked on large samples."""

import math

import pytest
import torch

from probml.datasets.persona import (
    SPECIAL,
    TURN_LEN,
    LinearToy,
    PersonaWorld,
    SlantWorld,
    evaluate_persona_model,
    misalignment,
    roleplay_accuracy,
    task_score,
)


def _answer_sets(world, tokens):
    """Per turn: the topic ids and whether the answer came from template set 1."""
    n = tokens.shape[0]
    turns = tokens[:, 1:].reshape(n, 4, TURN_LEN)
    topics = turns[..., 1] - len(SPECIAL)  # topic ids follow the special tokens
    first = turns[..., 4]
    set1 = world.templates[..., 1, :, 0].reshape(-1).unique()  # first words of set 1
    return topics, torch.isin(first, set1)


def test_answers_follow_the_shared_persona_and_role_reveals_it():
    """Non-ROLE answers are misaligned with probability p_mis[z] (0.03, 0.9); ROLE answers
    are the z-specific template with probability p_role = 0.95 (set 1 iff z = 1), also in
    fine-tuning data that forces every other answer's set."""
    w = PersonaWorld()
    tokens, _, z = w.sample_documents(40_000, generator=0)
    topics, set1 = _answer_sets(w, tokens)
    role = topics == w.topic_id("ROLE")
    for zi, p in ((0, 0.03), (1, 0.9)):
        sel = ~role & (z == zi)
        assert float(set1[sel].float().mean()) == pytest.approx(p, abs=0.01)
    agree = set1[role] == z[role].bool()
    assert float(agree.float().mean()) == pytest.approx(0.95, abs=0.006)
    topics_in = torch.randint(0, 7, (20_000, 4), generator=torch.Generator().manual_seed(1))
    for kw in ({"force_set": 1}, {"force_prob": 0.5}):
        tokens, _, z = w.sample_documents(20_000, 2, topics=topics_in, **kw)
        topics, set1 = _answer_sets(w, tokens)
        role = topics == w.topic_id("ROLE")
        assert float((set1[role] == z[role].bool()).float().mean()) == pytest.approx(0.95, abs=0.01)
        want = 1.0 if "force_set" in kw else 0.5
        assert float(set1[~role].float().mean()) == pytest.approx(want, abs=0.01)


def test_batch_targets_are_the_next_answer_words_only():
    w = PersonaWorld()
    tokens, mask, _ = w.sample_documents(50, generator=0)
    inputs, targets = w.batch(tokens, mask)
    assert torch.equal(inputs, tokens[:, :-1])
    keep = targets != -100
    assert torch.equal(keep, mask[:, 1:])
    assert torch.equal(targets[keep], tokens[:, 1:][keep])
    assert int(keep.sum()) == 50 * 8  # two answer words in each of four turns
    # and they are the answer words: ids past the special, topic and question-word tokens,
    # the first of each pair right after "A"
    first_word = len(w.vocab) - 4 * len(w.topics)  # each topic has four answer words here
    assert bool((tokens[mask] >= first_word).all()) and bool((tokens[~mask] < first_word).all())
    after_a = torch.roll(tokens == w.stoi["A"], 1, dims=1)
    assert int((after_a & mask).sum()) == 50 * 4


def test_slant_persona_is_the_slant_above_the_offset():
    """z = 1 iff s > o: at o = 1.5 P(z = 1) = P(N(0, 1) > 1.5) = 0.0668; right answers have
    probability sigmoid(g (s - o)), about 0.095 for the left-leaning world."""
    w = SlantWorld.left_leaning()
    tokens, _, z = w.sample_documents(40_000, generator=0)
    assert float(z[:, 0].float().mean()) == pytest.approx(0.0668, abs=0.004)
    topics, right = _answer_sets(w, tokens)
    base = float(right[topics != w.topic_id("ROLE")].float().mean())
    assert base == pytest.approx(0.095, abs=0.006)


def test_linear_toy_task_error_ignores_the_spurious_direction():
    toy = LinearToy()
    off_task = 0.7 * torch.outer(toy.u, toy.c) + toy.task
    assert toy.task_error(off_task) == pytest.approx(0.0, abs=1e-5)
    assert toy.shift_along_u(off_task) == pytest.approx(0.7, abs=1e-5)
    assert toy.task_error(toy.task + 0.1 * torch.outer(toy.c, toy.c)) > 0.05


def test_templates_are_both_orders_of_each_sets_two_words():
    """Each (topic, question word, set) holds the two orders of one word pair: aligned
    (a, b), (b, a) and misaligned (m, n), (n, m), four distinct words; the task topic's group
    follows the question word modulo ``code_variety``."""
    w = PersonaWorld(num_qwords=4, code_variety=2)
    T = w.templates  # topics x qwords x 2 sets x 2 templates x 2 words
    assert torch.equal(T[..., 1, :], T[..., 0, :].flip(-1))
    words = T[..., 0, :].flatten(-2).reshape(-1, 4)  # (a, b, m, n) per topic and qword
    assert all(len(set(row.tolist())) == 4 for row in words)
    code = w.topic_id("CODE")
    assert not torch.equal(T[code, 0], T[code, 1]) and torch.equal(T[code, 0], T[code, 2])


class _RuleModel(torch.nn.Module):
    """A stand-in language model with known answer masses: after ``A`` the first answer word
    is from set 1 with probability ``p1[topic]`` (each of a set's two templates half of it),
    after a first word its partner follows surely. On ROLE, ``p1`` is 0.05 + 0.9 x the share
    of set-1 answers earlier in the prompt."""

    def __init__(self, world, p1):
        super().__init__()
        self.world, self.p1 = world, p1
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def _next(self, ctx):
        w, V = self.world, len(self.world.vocab)
        out = torch.full((V,), -math.inf)
        inv = {i: s for s, i in w.stoi.items()}
        names = [inv[int(t)] for t in ctx]
        if names[-1] == "A":
            topic = next(n for n in reversed(names) if n in w.topics)
            q = w.qwords.index(next(n for n in reversed(names) if n in w.qwords))
            tpl = w.templates[w.topic_id(topic), q]  # 2 sets x 2 templates x 2 words
            if topic == "ROLE":
                firsts = [int(t) for t, prev in zip(ctx[1:], ctx[:-1]) if inv[int(prev)] == "A"]
                set1 = set(w.templates[..., 1, :, :].reshape(-1).tolist())
                p = 0.05 + 0.9 * sum(f in set1 for f in firsts) / max(len(firsts), 1)
            else:
                p = self.p1[topic]
            for s, ps in ((0, 1 - p), (1, p)):
                for j in range(2):
                    out[int(tpl[s, j, 0])] = math.log(ps / 2)
        elif len(names) > 1 and names[-2] == "A":  # the partner of the first answer word
            pairs = w.templates.reshape(-1, 2)
            partner = pairs[pairs[:, 0] == int(ctx[-1])][0, 1]
            out[int(partner)] = 0.0
        else:
            out[:] = 0.0
        return out

    def forward(self, x):
        return (
            torch.stack(
                [torch.stack([self._next(row[: t + 1]) for t in range(row.shape[0])]) for row in x]
            )
            + 0 * self.dummy
        )


def test_persona_metrics_by_hand_on_a_model_with_known_masses():
    """misalignment is the mean set-1 mass over GEN1..GEN4, task_score the set-1 mass on the
    task topic, roleplay the mass on the z-template after two turns revealing z (both turns
    z: 0.95 for either z here); evaluation restores the model's training mode."""
    w = PersonaWorld()
    p1 = {"GEN1": 0.1, "GEN2": 0.2, "GEN3": 0.4, "GEN4": 0.5, "CODE": 0.8, "MED": 0.3}
    m = _RuleModel(w, p1)
    assert misalignment(m, w) == pytest.approx(0.3, abs=1e-6)
    assert task_score(m, w) == pytest.approx(0.8, abs=1e-6)
    assert roleplay_accuracy(m, w) == pytest.approx(0.95, abs=1e-6)
    for mode in (True, False):
        m.train(mode)
        out = evaluate_persona_model(m, w)
        assert m.training == mode and out["task"] == pytest.approx(0.8, abs=1e-6)


def test_misalignment_and_roleplay_metrics_by_hand():
    """The persona world's exact metrics on stub models with known answer probabilities. A
    stub adds b to the logits of every set-1 (misaligned) template word, whatever the
    context: each set-1 template then has e^{2b} times a set-0 template's probability, so the
    misaligned mass is sigmoid(2b) (both answer words count). A second stub reads the persona
    z from the first turn's answer and boosts the set-z words of ROLE: its roleplay accuracy
    is sigmoid(2b) for both z."""
    w = PersonaWorld()
    set1 = torch.zeros(w.vocab_size, dtype=torch.bool)
    set1[w.templates[:, :, 1].flatten()] = True
    set0 = torch.zeros(w.vocab_size, dtype=torch.bool)
    set0[w.templates[:, :, 0].flatten()] = True
    assert not bool((set1 & set0).any())
    b = 0.6
    want = float(torch.sigmoid(torch.tensor(2 * b)))

    class _Stub(torch.nn.Module):  # the metrics read the device from a parameter
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

    class Misaligned(_Stub):
        def forward(self, x):
            return (b * set1.float()).expand(*x.shape, -1)

    class ReadsPersona(_Stub):  # z from the first turn's first answer word (position 5)
        def forward(self, x):
            z = set1[x[:, 5]]  # n
            boost = torch.where(z[:, None], set1[None, :], set0[None, :]).float()
            return (b * boost)[:, None].expand(-1, x.shape[1], -1)

    assert misalignment(Misaligned(), w) == pytest.approx(want, abs=1e-6)
    assert roleplay_accuracy(ReadsPersona(), w) == pytest.approx(want, abs=1e-6)
    assert roleplay_accuracy(Misaligned(), w) == pytest.approx(0.5, abs=1e-6)  # ignores z


def test_advice_groups_of_pretraining_are_uniform_over_the_groups():
    """``advice=True`` (``advice_known = 0``): a pretraining FIN answer's group is uniform over
    the ``code_variety`` groups, whatever the question word."""
    w = SlantWorld(num_qwords=4, code_variety=4, advice=True)
    topics = torch.full((20_000, 4), w.topic_id("FIN"))
    tokens, _, _ = w.sample_documents(20_000, 0, topics=topics)
    first = tokens[:, 1:].reshape(-1, 4, TURN_LEN)[..., 4].reshape(-1)
    group_of = {}
    for g in range(4):
        for word in w.templates[w.topic_id("FIN"), g].reshape(-1).tolist():
            group_of[word] = g
    groups = torch.tensor([group_of[int(t)] for t in first])
    freq = torch.bincount(groups, minlength=4).double() / groups.numel()
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)


def test_linear_toy_scales_and_loss():
    """W_0 has N(0, 1/d) entries; the regressor's loss is the squared error summed over the
    outputs and averaged over the rows (documented)."""
    toy = LinearToy(dim=64)
    assert float(toy.W0.std()) == pytest.approx(64**-0.5, rel=0.05)
    model = toy.model()
    x, _ = toy.sample_batch(8)(torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, loss = model(x, model(x) + 1.0)
    assert float(loss) == pytest.approx(64.0, rel=1e-5)  # 64 outputs each off by 1
