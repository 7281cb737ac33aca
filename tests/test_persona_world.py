"""The planted-persona worlds' generative rules, checked on large samples."""

import pytest
import torch

from probml.datasets.persona import SPECIAL, TURN_LEN, LinearToy, PersonaWorld, SlantWorld


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
