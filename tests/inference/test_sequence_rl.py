import numpy as np
import pytest
import torch

from probml.inference.basis_rl import advantages_and_values
from probml.inference.sequence_rl import (
    AdditionTask,
    addition_policy,
    answer_log_prob,
    offline_counts,
    run_sequence_rl,
    sample_answers,
    supervised_warmup,
)


def test_task_tokens_and_exact_match_reward():
    task = AdditionTask(64, seed=0)
    a = task.prompts[:, 0] * 10 + task.prompts[:, 1]
    b = task.prompts[:, 3] * 10 + task.prompts[:, 4]
    s = task.answers[:, 0] * 100 + task.answers[:, 1] * 10 + task.answers[:, 2]
    assert torch.equal(a + b, s) and bool((task.prompts[:, 2] == 10).all())
    assert torch.equal(task.carries, (a % 10 + b % 10) >= 10)
    # GP-BASIS features: the four digits scaled to [0, 1] and the carry flag
    digits = task.prompts[:, [0, 1, 3, 4]].double()
    assert torch.allclose(task.features, torch.cat([digits / 9, task.carries.double()[:, None]], 1))
    idx = torch.arange(4)
    right = task.answers[idx].unsqueeze(1)
    wrong = right.clone()
    wrong[:, :, 2] = (wrong[:, :, 2] + 1) % 10
    r = task.rewards(idx, torch.cat([right, wrong], 1))
    assert torch.equal(r, torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_prompts"):
        AdditionTask(1)
    with pytest.raises(TypeError, match="num_prompts must be an integer"):
        AdditionTask(2.5)  # failed inside a slice, naming nothing
    with pytest.raises(ValueError, match=r"num_prompts must be in \[2, 10000\], got 10001"):
        AdditionTask(10_001)  # there are 10 000 distinct 2-digit additions
    # a smaller task holds the first prompts of a larger one with the same seed, in order
    small = AdditionTask(16, seed=0)
    assert torch.equal(small.prompts, task.prompts[:16])
    assert torch.equal(small.answers, task.answers[:16])


def test_answer_log_prob_is_a_normalised_distribution_matching_sampling():
    torch.manual_seed(0)
    m = addition_policy(d_model=32, n_layers=1).eval()
    task = AdditionTask(8, seed=0)
    p = task.prompts[:1]
    every = torch.cartesian_prod(*[torch.arange(10)] * 3).unsqueeze(0)  # 1 x 1000 x 3
    with torch.no_grad():
        lp = answer_log_prob(m, p, every)[0]
    # the 3 digits range over 10 of the 12 tokens: the digit answers carry mass < 1
    total = float(torch.logsumexp(lp, 0).exp())
    assert 0 < total <= 1 + 1e-5
    samples = sample_answers(m, p, 4000, torch.Generator().manual_seed(1))[0]
    digits = (samples < 10).all(-1)
    assert abs(float(digits.double().mean()) - total) < 0.03
    # the first digit's empirical frequencies match the model's marginal
    first = torch.logsumexp(lp.reshape(10, 100), 1).exp()
    emp = torch.bincount(samples[digits][:, 0], minlength=10).double() / len(samples)
    assert float((emp - first).abs().max()) < 0.03


@pytest.fixture(scope="module")
def warmed():
    """A small policy warmed up to 15% on 256 prompts, its history and offline counts (K = 8).
    Tests must not train it in place (``run_sequence_rl`` trains a copy)."""
    task = AdditionTask(256, seed=0)
    torch.manual_seed(0)
    m = addition_policy(d_model=32, n_layers=2)
    hist = supervised_warmup(m, task, 0.15, max_steps=1500, batch_size=64, lr=3e-3, seed=0)
    k = offline_counts(m, task, 8, torch.Generator().manual_seed(0), "cpu")
    return task, m, hist, k


def test_warmup_offline_counts_and_one_rl_run(warmed):
    task, m, hist, k = warmed
    assert hist[-1][1] >= 0.15
    assert k.shape == (256,) and int(k.min()) >= 0 and int(k.max()) <= 8
    res = run_sequence_rl(
        m, task, "basis", steps=3, batch_size=32, mc_rollouts=8, eval_every=3, offline=k, K=8
    )
    assert len(res.value_mse) == 3 and res.rollouts == [32, 32, 32]
    # the success rate is read before steps 0, eval_every, ... and once after the last
    assert res.eval_steps == [0, 3] and len(res.mean_reward) == 2
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        run_sequence_rl(m, task, "basis", steps=1, offline=k, K=8, lr=-1e-3)  # ascent
    off = run_sequence_rl(
        m, task, "offline", steps=3, batch_size=32, mc_rollouts=8, eval_every=3, offline=k, K=8
    )
    # the offline values are one member (a = 1, c = 0) of the batch-wide family
    assert len(off.floor_mse) == 3
    assert all(f <= v + 1e-12 for f, v in zip(off.floor_mse, off.value_mse)), off
    g8 = run_sequence_rl(m, task, "grpo", steps=2, batch_size=16, mc_rollouts=4, offline=k, K=8)
    gp = run_sequence_rl(m, task, "gp-basis", steps=2, batch_size=16, mc_rollouts=4, offline=k, K=8)
    assert len(gp.value_mse) == 2
    rw = run_sequence_rl(
        m, task, "bayes-basis-rw", steps=2, batch_size=16, mc_rollouts=4, offline=k, K=8
    )  # the loop builds the drift filter (make_tracker) and carries it across steps
    assert len(rw.value_mse) == 2 and rw.rollouts == [16, 16]
    eta = run_sequence_rl(
        m, task, "bayes-basis-rw-eta", steps=2, batch_size=16, mc_rollouts=4, offline=k, K=8
    )  # the prompt-drift filter gets the batch's prompt indices from the loop
    assert len(eta.value_mse) == 2 and np.isfinite(eta.value_mse).all()
    # stateful estimators refuse to run without their state
    r16, p16 = torch.ones(16, 1), torch.full((16,), 0.5, dtype=torch.float64)
    for name in ("bayes-basis-rw", "bayes-basis-rw-eta", "spo"):
        with pytest.raises(ValueError, match="tracker"):
            advantages_and_values(name, r16, p16, torch.arange(16))
    assert g8.rollouts == [128, 128]
    # side by side: the driver's trajectory and errors are those of its own run when no extra
    # rollouts are drawn, each side estimator keeps its own state, and they do not interact
    kw = dict(steps=2, batch_size=16, mc_rollouts=4, offline=k, K=8)
    both = run_sequence_rl(m, task, "grpo", side_by_side=("bayes-basis-rw", "offline"), **kw)
    alone = run_sequence_rl(m, task, "grpo", side_by_side=("offline", "grpo"), **kw)
    assert both.value_mse == g8.value_mse and both.floor_mse == g8.floor_mse
    assert both.mean_reward == g8.mean_reward and both.rollouts == g8.rollouts
    assert both.side_value_mse["offline"] == alone.side_value_mse["offline"]
    # a NaN count was let through to NaN offline values
    bad = k.double().clone()
    bad[0] = float("nan")
    with pytest.raises(ValueError, match="^offline must hold"):
        run_sequence_rl(m, task, "basis", **{**kw, "offline": bad})
    assert set(alone.side_value_mse) == {"offline"}  # the driver is not repeated
    # a side estimator is scored against the driver's Monte Carlo values: the offline values
    # are one member of the batch-wide family whose best member is the floor
    assert all(f <= v + 1e-12 for f, v in zip(both.floor_mse, both.side_value_mse["offline"]))
    assert len(both.side_value_mse["bayes-basis-rw"]) == 2
    # a single-rollout driver with a group estimator beside it: 8 rollouts drawn per prompt
    one = run_sequence_rl(m, task, "basis", side_by_side=("grpo",), **kw)
    assert one.rollouts == [128, 128] and len(one.side_value_mse["grpo"]) == 2
    with pytest.raises(ValueError, match="side_by_side"):
        run_sequence_rl(m, task, "basis", side_by_side="grpo", **kw)
    with pytest.raises(ValueError, match="estimator"):
        run_sequence_rl(m, task, "basis", side_by_side=("ppo",), **kw)
    with pytest.raises(ValueError, match="estimator"):
        run_sequence_rl(m, task, "ppo", steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        run_sequence_rl(m, task, "basis", steps=1, batch_size=1000)
    with pytest.raises(ValueError, match="offline"):
        run_sequence_rl(m, task, "basis", steps=1, offline=k[:10], K=8)
    with pytest.raises(ValueError, match="offline"):
        run_sequence_rl(m, task, "basis", steps=1, offline=k + 100, K=8)
    with pytest.raises(ValueError, match="carry_weight"):
        supervised_warmup(m, task, 0.4, carry_weight=0)
    for target in (0.0, 1.0):  # 1 is never sure to be reached: the warm-up would run out
        with pytest.raises(ValueError, match=r"target_accuracy must be in \(0, 1\)"):
            supervised_warmup(m, task, target)
    # counts checked by name before any sampling (before: a group estimator with one rollout
    # per prompt failed inside grpo_advantages naming "G", after the offline counts; 2.5
    # rollouts failed inside torch; check_every = 0 divided by zero; check_every above
    # max_steps ended in an IndexError building the failure message)
    for kw_bad, err, match in (
        (dict(group_size=1), ValueError, "group_size must be >= 2"),
        (dict(group_size=2.5), TypeError, "group_size must be an integer"),
        (dict(batch_size=16.5), TypeError, "batch_size must be an integer"),
        (dict(mc_rollouts=1), ValueError, "mc_rollouts"),
        (dict(mc_rollouts=4.5), TypeError, "mc_rollouts"),
    ):
        with pytest.raises(err, match=match):
            run_sequence_rl(m, task, "grpo", **{**kw, **kw_bad})
    run_sequence_rl(m, task, "basis", **{**kw, "steps": 1, "group_size": 1})  # no group: fine
    for kw_bad, err, match in (
        (dict(check_every=0), ValueError, "check_every"),
        (
            dict(check_every=30, max_steps=10),
            ValueError,
            r"check_every \(30\) must be <= max_steps",
        ),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(max_steps=2.5), TypeError, "max_steps"),
        (dict(lr=-1.0), ValueError, "lr"),
    ):
        with pytest.raises(err, match=match):
            supervised_warmup(m, task, 0.4, **kw_bad)


def test_group_policy_gradient_raises_the_success_rate(warmed):
    """80 GRPO steps (ascent on the advantage-weighted log-likelihood of every rollout of the
    group) from the 15% policy: measured gains of 0.07 to 0.13 over four seeds. Descending,
    or pairing the group's advantages with one rollout's log-probability (a gradient of zero
    in expectation: GRPO's advantages sum to zero over the group), gains nothing."""
    task, m, _, k = warmed
    res = run_sequence_rl(
        m, task, "grpo", steps=80, batch_size=32, group_size=8, mc_rollouts=2, eval_every=80,
        offline=k, K=8, lr=1e-3, seed=1,
    )  # fmt: skip
    start, end = res.mean_reward
    assert end > start + 0.04, res.mean_reward


def test_warmup_below_unit_carry_weight_leaves_the_carry_sums_hard():
    """The documented design: with ``carry_weight`` 0.1 the reference policy is good at sums
    without a carry and poor at those with one (measured: 0.40 against 0.09; at 10 the
    other way round, 0.04 against 0.30)."""
    from probml.inference.sequence_rl import _mean_success

    task = AdditionTask(256, seed=0)
    torch.manual_seed(0)
    m = addition_policy(d_model=32, n_layers=2)
    supervised_warmup(m, task, 0.15, max_steps=1500, batch_size=64, lr=3e-3, carry_weight=0.1)
    s = _mean_success(m, task, torch.arange(256), 32, torch.Generator().manual_seed(9), "cpu")
    c = task.carries
    assert float(s[~c].mean()) > 2.5 * float(s[c].mean())


def test_value_mse_subtracts_an_unbiased_monte_carlo_variance():
    """(v - V_hat)^2 - V_hat (1 - V_hat)/(n - 1) has expectation (v - V)^2 exactly over
    V_hat = k/n, k ~ Binomial(n, V): the reported value MSE is not inflated by the Monte
    Carlo error of its own reference (summed here over every k, no sampling)."""
    import math

    from probml.inference.sequence_rl import _mc_value_variance

    n = 8
    k = torch.arange(n + 1, dtype=torch.float64)
    for V, v in ((0.3, 0.5), (0.9, 0.1), (0.5, 0.5)):
        pk = torch.tensor(
            [math.comb(n, i) * V**i * (1 - V) ** (n - i) for i in range(n + 1)], dtype=torch.float64
        )
        v_hat = k / n
        expected = (pk * ((v - v_hat) ** 2 - _mc_value_variance(v_hat, n))).sum()
        assert float(expected) == pytest.approx((v - V) ** 2, abs=1e-12)


class _Adder(torch.nn.Module):
    """A stand-in policy with known answer probabilities: at each answer position the right
    digit's logit is ``boost`` and the other 11 tokens' are 0, so each digit is right with
    probability e^b / (e^b + 11) (1/2 for b = log 11). It records the mode of every call."""

    def __init__(self, boost: float):
        super().__init__()
        self.boost = torch.nn.Parameter(torch.tensor(float(boost)))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        d = x[:, :6]
        s = (d[:, 0] * 10 + d[:, 1]) + (d[:, 3] * 10 + d[:, 4])
        digits = torch.stack([s // 100, (s // 10) % 10, s % 10], 1)  # B x 3
        out = torch.zeros(*x.shape, 12)
        for t in range(5, min(x.shape[1], 8)):  # position t predicts answer digit t - 5
            out[torch.arange(x.shape[0]), t, digits[:, t - 5]] = 1.0
        return out * self.boost


def test_sampling_counts_and_the_loop_by_hand_on_a_known_policy(monkeypatch):
    """On a policy with known probabilities: answers are sampled at temperature 1 (each
    digit right half the time); ``offline_counts`` covers every prompt across its chunks of
    512; the loop samples the reference in eval mode, gives each batch prompt its own
    offline value, and its value MSE is the documented noise-corrected mean, by hand; the
    caller's reference comes back in the mode it was given in."""
    from probml.inference import sequence_rl

    task = AdditionTask(600, seed=1)
    half = _Adder(np.log(11.0))
    ans = sample_answers(half, task.prompts[:50], 80, torch.Generator().manual_seed(0))
    right = (ans == task.answers[:50, None]).double()
    assert abs(float(right.mean()) - 0.5) < 0.02
    perfect = _Adder(50.0).train()
    k = offline_counts(perfect, task, 3, torch.Generator().manual_seed(0), "cpu")
    assert k.shape == (600,) and bool((k == 3).all())
    perfect.modes.clear()
    k0 = torch.arange(600) % 9  # offline counts that differ from prompt to prompt
    seen, v_mc = [], []
    real_est, real_mean = sequence_rl.estimate_on_first, sequence_rl._mean_success

    def est(name, tracker, rewards, p0, idx, *rest):
        out = real_est(name, tracker, rewards, p0, idx, *rest)
        seen.append((p0, idx, out[1]))
        return out

    def mean_success(model, task_, prompt_idx, num, *rest):
        out = real_mean(model, task_, prompt_idx, num, *rest)
        if num == 16:
            v_mc.append(out)
        return out

    monkeypatch.setattr(sequence_rl, "estimate_on_first", est)
    monkeypatch.setattr(sequence_rl, "_mean_success", mean_success)
    res = run_sequence_rl(
        half, task, "basis", steps=3, batch_size=20, lr=0.0, mc_rollouts=16, offline=k0, K=8,
        eval_prompts=8,
    )  # fmt: skip
    p0_all = (k0.double() + 0.5) / 9
    for (p0, idx, value), v, mse in zip(seen, v_mc, res.value_mse):
        assert torch.equal(p0, p0_all[idx])
        want = ((value - v) ** 2 - v * (1 - v) / 15).mean()
        assert mse == pytest.approx(float(want), abs=1e-12)
    assert len(seen) == 3
    modes = []

    def counts(model, *rest):
        modes.append(model.training)
        return real_counts(model, *rest)

    real_counts = sequence_rl.offline_counts
    monkeypatch.setattr(sequence_rl, "offline_counts", counts)
    boost = perfect.boost.detach().clone()
    run_sequence_rl(perfect, task, "basis", steps=1, batch_size=4, K=2, eval_prompts=4)
    assert modes == [False]  # the reference's copy samples the offline counts in eval mode
    # the caller's model is left as it was: its mode, its weights, never called
    assert perfect.training and not perfect.modes and torch.equal(perfect.boost, boost)
    with pytest.raises(ValueError, match="batch_size"):
        run_sequence_rl(half, task, "basis", steps=1, batch_size=1, offline=k0, K=8)


def test_warmup_stops_at_the_target_and_counts_are_checked(monkeypatch):
    """The warm-up stops at the first check whose success rate reaches the target (equal
    counts), returns the model in eval mode, trains by AdamW without weight decay, and
    refuses a ``check_every`` past ``max_steps``; the loop refuses offline counts above
    ``K``; ``offline_counts`` covers a task whose last chunk of 512 holds one prompt."""
    from probml.inference import sequence_rl

    task = AdditionTask(64, seed=0)
    torch.manual_seed(0)
    m = addition_policy(d_model=16, n_layers=1)
    with pytest.raises(ValueError, match=r"check_every \(11\) must be <= max_steps \(10\)"):
        supervised_warmup(m, task, max_steps=10, check_every=11)
    decays = []
    real_adamw = torch.optim.AdamW

    def adamw(params, **kw):
        decays.append(kw.get("weight_decay", "default"))
        return real_adamw(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(
        sequence_rl, "_mean_success", lambda *a: torch.full((4,), 0.25, dtype=torch.float64)
    )
    hist = supervised_warmup(m, task, 0.25, max_steps=10, check_every=5, batch_size=4)
    assert hist == [(5, 0.25)] and not m.training and decays == [0.0]
    with pytest.raises(ValueError, match=r"offline must hold 64 counts in \[0, K=8\]"):
        run_sequence_rl(m, task, "basis", steps=1, batch_size=4, offline=torch.full((64,), 9), K=8)
    big = AdditionTask(513, seed=2)
    k = offline_counts(_Adder(50.0), big, 2, torch.Generator().manual_seed(0), "cpu")
    assert k.shape == (513,) and bool((k == 2).all())
