r"""The BASIS sequence task: a small TinyLM policy on 2-digit addition with an exact-match reward.

**[paper]** setting in miniature (critic-free RL with a verifiable reward); **[design]** the
task from the spec: prompts ``"ab+cd="`` (two digits each, leading zeros), answers of three
digits (``"075"``), reward 1 iff all three digits are right. The policy is the shared
:class:`~probml.models.lm.TinyLM`, supervised to a modest accuracy (the reference policy, about
40% by default), then trained by the policy gradient

.. math:: \nabla J \approx \frac1{BG}\sum_{i,g} A_{ig}\,\nabla\log\pi_\theta(y_{ig}\mid x_i),

with the advantages of any estimator of :mod:`probml.inference.advantage` (one rollout per
prompt for BASIS, REINFORCE++ and offline-only; ``G`` for GRPO / RLOO). Offline values come from
``K`` reference samples per prompt under the reference policy. The true value of a prompt under
the current policy is estimated by ``mc_rollouts`` fresh rollouts, and the reported value MSE
subtracts that estimate's own variance (:math:`\hat V(1-\hat V)/(n-1)`, unbiased), so it
estimates :math:`E[(\hat v_i - V_i)^2]`.

Sampling is vectorised over prompts x rollouts (three decoding steps of one batched forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from probml.inference.advantage import batch_wide_floor, offline_values
from probml.inference.basis_rl import (
    GROUP,
    check_estimator,
    check_loop_sizes,
    estimate_on_first,
    make_tracker,
    side_estimators,
)
from probml.models.lm import TinyLM, TinyLMConfig
from probml.utils import (
    check_int,
    check_interval,
    check_positive,
    make_generator,
    progress,
    resolve_device,
)

__all__ = [
    "AdditionTask",
    "addition_policy",
    "sample_answers",
    "answer_log_prob",
    "supervised_warmup",
    "SequenceRLResult",
    "run_sequence_rl",
]

PLUS, EQ = 10, 11
PROMPT_LEN, ANSWER_LEN = 6, 3


class AdditionTask:
    """``num_prompts`` distinct 2-digit additions (a seeded subset of the 10 000).

    The subset is the first ``num_prompts`` of one seeded permutation, so
    ``AdditionTask(n, seed)`` holds the first ``n`` prompts of ``AdditionTask(m, seed)`` for
    ``n <= m``, in the same order: a policy warmed up on the larger task can be trained on a
    smaller pool of its prompts, with the offline counts sliced to ``[:n]``.

    Attributes:
        prompts: ``N x 6`` tokens; answers: ``N x 3`` tokens; carries: ``N`` (units carry);
        features: ``N x 5`` (scaled digits, carry flag); vocab_size: 12; num_prompts: ``N``;
        seed: the permutation's seed.
    """

    vocab_size = 12

    def __init__(self, num_prompts: int = 2048, seed: int = 0):
        check_int("num_prompts", num_prompts, minimum=2)  # 2.5 failed inside a slice
        if not num_prompts <= 10_000:
            raise ValueError(f"num_prompts must be in [2, 10000], got {num_prompts}")
        g = make_generator(seed)
        idx = torch.randperm(10_000, generator=g)[:num_prompts]
        a, b = idx // 100, idx % 100
        self.a, self.b = a, b
        self.prompts = torch.stack(
            [a // 10, a % 10, torch.full_like(a, PLUS), b // 10, b % 10, torch.full_like(a, EQ)], 1
        )
        s = a + b
        self.answers = torch.stack([s // 100, (s // 10) % 10, s % 10], 1)
        self.carries = (a % 10 + b % 10) >= 10
        # prompt features for GP-BASIS: the four digits scaled to [0, 1] and the carry flag
        self.features = torch.cat(
            [self.prompts[:, [0, 1, 3, 4]].double() / 9, self.carries.double()[:, None]], 1
        )
        self.num_prompts, self.seed = num_prompts, seed

    def rewards(self, prompt_idx: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Exact match: ``answers`` ``B x G x 3`` for prompts ``B`` -> ``B x G`` in {0, 1}."""
        truth = self.answers.to(answers.device)[prompt_idx].unsqueeze(1)
        return (answers == truth).all(-1).double()

    def sequences(self, prompt_idx: torch.Tensor) -> torch.Tensor:
        """Full training sequences ``B x 9`` (prompt then answer)."""
        return torch.cat([self.prompts[prompt_idx], self.answers[prompt_idx]], 1)


def addition_policy(d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> TinyLM:
    """A TinyLM sized for the task (context 9, vocabulary 12)."""
    return TinyLM(
        TinyLMConfig(
            vocab_size=AdditionTask.vocab_size,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            context=PROMPT_LEN + ANSWER_LEN,
        )
    )


@torch.no_grad()
def sample_answers(
    model: TinyLM, prompts: torch.Tensor, num: int, generator: torch.Generator
) -> torch.Tensor:
    """``num`` sampled answers per prompt (temperature 1): ``B x 6`` -> ``B x num x 3``."""
    B = prompts.shape[0]
    seq = prompts.repeat_interleave(num, 0)
    for _ in range(ANSWER_LEN):
        probs = torch.softmax(model(seq)[:, -1].float(), -1)
        nxt = torch.multinomial(probs.to(generator.device), 1, generator=generator)
        nxt = nxt.to(seq.device)  # no copy when the generator lives on the model's device
        seq = torch.cat([seq, nxt], 1)
    return seq[:, PROMPT_LEN:].reshape(B, num, ANSWER_LEN)


def answer_log_prob(model: TinyLM, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``log pi(answer | prompt)`` with gradients: ``B x 6``, ``B x G x 3`` -> ``B x G``."""
    B, G, _ = answers.shape
    seq = torch.cat([prompts.repeat_interleave(G, 0), answers.reshape(B * G, ANSWER_LEN)], 1)
    logits = model(seq[:, :-1])[:, PROMPT_LEN - 1 :]  # predicts the 3 answer tokens
    lp = torch.log_softmax(logits.float(), -1).gather(-1, seq[:, PROMPT_LEN:].unsqueeze(-1))
    return lp.squeeze(-1).sum(-1).reshape(B, G)


@torch.no_grad()
def _mean_success(model, task, prompt_idx, num, generator, device) -> torch.Tensor:
    ans = sample_answers(model, task.prompts[prompt_idx].to(device), num, generator)
    return task.rewards(prompt_idx, ans).mean(1)


def supervised_warmup(
    model: TinyLM,
    task: AdditionTask,
    target_accuracy: float = 0.4,
    max_steps: int = 3000,
    batch_size: int = 128,
    lr: float = 3e-3,
    check_every: int = 25,
    carry_weight: float = 1.0,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    verbose: bool = False,
) -> list[tuple[int, float]]:
    """Cross-entropy on the answer tokens of random task prompts until the sampled success
    rate on 256 prompts reaches ``target_accuracy`` (checked every ``check_every`` steps).

    ``carry_weight`` is the relative sampling weight of prompts whose units digits carry
    (**[design]**: below 1 the reference policy is good at no-carry sums and poor at carry
    sums, so prompt difficulties spread out as they do for real reasoning prompts; 1 gives a
    uniform warm-up and nearly equal difficulties). The success rate is measured on 256
    fixed prompts (every prompt of a smaller task); training is AdamW without weight decay.
    Returns ``(step, success rate)`` checkpoints, with the model in eval mode; raises if the
    target is not reached."""
    check_interval("target_accuracy", target_accuracy)
    if not carry_weight > 0:  # NaN fails too
        raise ValueError(f"carry_weight must be > 0, got {carry_weight}")
    max_steps, batch_size = check_int("max_steps", max_steps), check_int("batch_size", batch_size)
    check_every = check_int("check_every", check_every)  # 0 failed as a modulo by zero
    if check_every > max_steps:  # no check would run (and the final message had no history)
        raise ValueError(f"check_every ({check_every}) must be <= max_steps ({max_steps})")
    check_positive("lr", lr)
    dev = resolve_device(device)
    model.to(dev).train()
    g = make_generator(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    probe = torch.randperm(task.num_prompts, generator=g)[:256]
    history = []
    weights = torch.where(task.carries, carry_weight, 1.0).double()
    for step in progress(range(1, max_steps + 1), verbose=verbose, desc="supervised warm-up"):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=g)
        seq = task.sequences(idx).to(dev)
        logits = model(seq[:, :-1])[:, PROMPT_LEN - 1 :]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), seq[:, PROMPT_LEN:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % check_every == 0:
            model.eval()
            acc = float(_mean_success(model, task, probe, 4, g, dev).mean())
            model.train()
            history.append((step, acc))
            if acc >= target_accuracy:
                model.eval()
                return history
    raise RuntimeError(
        f"supervised warm-up reached {history[-1][1]:.3f} < target {target_accuracy} in "
        f"{max_steps} steps; raise max_steps or lower target_accuracy"
    )


@dataclass
class SequenceRLResult:
    """Per-step curves: mean success on a fixed probe set of prompts, value MSE (noise-corrected) and rollouts."""

    estimator: str
    mean_reward: list[float] = field(default_factory=list)
    value_mse: list[float] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    #: per step, the best value MSE of any batch-wide shift and scale of the offline values
    #: (:func:`~probml.inference.advantage.batch_wide_floor`, noise-corrected like value_mse)
    floor_mse: list[float] = field(default_factory=list)
    #: per step, the value MSE of each ``side_by_side`` estimator on the same batches
    side_value_mse: dict[str, list[float]] = field(default_factory=dict)


def _mc_value_variance(v_mc: torch.Tensor, n: int) -> torch.Tensor:
    r"""Unbiased estimate :math:`\hat V(1 - \hat V)/(n - 1)` of the variance of
    :math:`\hat V = k/n` (``k`` of ``n`` rollouts correct), so that
    :math:`E[(v - \hat V)^2 - \hat V(1 - \hat V)/(n - 1)] = (v - V)^2` for a fixed ``v``."""
    return v_mc * (1 - v_mc) / (n - 1)


def run_sequence_rl(
    reference: TinyLM,
    task: AdditionTask,
    estimator: str = "basis",
    steps: int = 100,
    batch_size: int = 64,
    group_size: int = 8,
    K: int = 16,
    lr: float = 3e-4,
    mc_rollouts: int = 64,
    eval_every: int = 10,
    eval_prompts: int = 256,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    offline: torch.Tensor | None = None,
    verbose: bool = False,
    side_by_side: tuple[str, ...] = (),
) -> SequenceRLResult:
    """Policy-gradient training of a copy of ``reference`` with one estimator.

    Args:
        reference: the warmed-up policy; it defines the offline values, and a copy of it
            (moved to ``device``) is trained. The caller's model itself is left as it was:
            its weights, its device and its train/eval mode.
        estimator: see :data:`probml.inference.basis_rl.SINGLE_ROLLOUT` and ``GROUP``.
        K: reference samples per prompt for the offline values (ignored when ``offline`` is
            given: precomputed ``N`` counts ``k_i`` out of ``K``).
        mc_rollouts: rollouts per batch prompt for the true value at every step.
        eval_every, eval_prompts: success rate (4 samples per prompt) every
            ``eval_every`` steps on ``eval_prompts`` fixed prompts (every prompt of the task
            when it has fewer).
        side_by_side: further estimators whose value estimates are recorded on the same
            batches of the same trajectory (``side_value_mse``), each with its own state
            across steps; they never touch the policy. Every step then draws the largest
            number of rollouts any of them needs (``group_size`` if one is a group
            estimator); single-rollout estimators, the driving ``estimator`` included, see
            only the first rollout of each prompt, and ``rollouts`` counts all drawn. A
            paired comparison of value estimation: the estimators differ only in their
            estimates, not in the policy states they are measured at.
    """
    import copy

    check_estimator(estimator)
    side = side_estimators(estimator, side_by_side)
    batch_size, group_size = check_loop_sizes(
        batch_size, task.num_prompts, group_size, (estimator, *side)
    )
    mc_rollouts = check_int("mc_rollouts", mc_rollouts, 2)
    for name, value in (("steps", steps), ("K", K), ("eval_every", eval_every)):
        check_int(name, value)
    check_int("eval_prompts", eval_prompts)
    check_positive("lr", lr, strict=False)  # lr = 0 keeps the reference policy
    dev = resolve_device(device)
    g = make_generator(seed)
    # the copy is the policy; the caller's model keeps its device, mode and weights
    policy = copy.deepcopy(reference).to(dev).eval()
    if offline is not None and (
        offline.shape != (task.num_prompts,) or not bool(((offline >= 0) & (offline <= K)).all())
    ):
        raise ValueError(
            f"offline must hold {task.num_prompts} counts in [0, K={K}], got shape "
            f"{tuple(offline.shape)}"
        )
    # the copy still holds the reference's weights: these are the reference's counts
    k = offline_counts(policy, task, K, g, dev) if offline is None else offline
    p0 = offline_values(k.double(), K)
    policy.train()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    tracker = make_tracker(estimator, p0)
    side_trackers = {e: make_tracker(e, p0) for e in side}
    probe = torch.randperm(task.num_prompts, generator=g)[:eval_prompts]
    out = SequenceRLResult(estimator, side_value_mse={e: [] for e in side})
    n_roll = max(group_size if e in GROUP else 1 for e in (estimator, *side))
    for step in progress(range(steps), verbose=verbose, desc=f"sequence RL ({estimator})"):
        if step % eval_every == 0:
            policy.eval()
            out.mean_reward.append(float(_mean_success(policy, task, probe, 4, g, dev).mean()))
            out.eval_steps.append(step)
        idx = torch.randperm(task.num_prompts, generator=g)[:batch_size]
        prompts = task.prompts[idx].to(dev)
        policy.eval()
        with torch.no_grad():
            v_mc = _mean_success(policy, task, idx, mc_rollouts, g, dev).cpu()
            answers = sample_answers(policy, prompts, n_roll, g)
            rewards = task.rewards(idx, answers).cpu()
            batch = (rewards, p0[idx], idx, task.features[idx], group_size)
            adv, value, _ = estimate_on_first(estimator, tracker, *batch)
            side_values = {e: estimate_on_first(e, side_trackers[e], *batch)[1] for e in side}
        noise = _mc_value_variance(v_mc, mc_rollouts)
        out.value_mse.append(float(((value - v_mc) ** 2 - noise).mean()))
        for e, v in side_values.items():
            out.side_value_mse[e].append(float(((v - v_mc) ** 2 - noise).mean()))
        out.floor_mse.append(batch_wide_floor(v_mc, p0[idx], noise)[0])
        out.rollouts.append(batch_size * n_roll)
        policy.train()
        # the driver learns from the rollouts its advantages cover (the first, or the group)
        lp = answer_log_prob(policy, prompts, answers[:, : adv.shape[1]])
        loss = -(adv.to(dev).float() * lp).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    policy.eval()
    out.mean_reward.append(float(_mean_success(policy, task, probe, 4, g, dev).mean()))
    out.eval_steps.append(steps)
    return out


@torch.no_grad()
def offline_counts(
    reference: TinyLM, task: AdditionTask, K: int, generator: torch.Generator, device
) -> torch.Tensor:
    """``k_i``: correct answers among ``K`` reference samples, for every prompt (``N``)."""
    K = check_int("K", K)
    device = resolve_device(device)
    out = []
    for start in range(0, task.num_prompts, 512):
        idx = torch.arange(start, min(start + 512, task.num_prompts))
        ans = sample_answers(reference, task.prompts[idx].to(device), K, generator)
        out.append(task.rewards(idx, ans).sum(1).cpu())
    return torch.cat(out)
