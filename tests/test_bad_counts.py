"""Counts and scales that were once accepted without a word: a zero or negative count (an empty
run, a planner with nothing to choose), a fractional one (silently truncated), a negative
pseudo-count or edge count, a matrix with no Cholesky factor. Each must be rejected with an
error that names the argument."""

import math

import pytest
import torch


def _offline_values_fractional_K():
    from probml.inference.advantage import offline_values

    offline_values(torch.tensor([1.0, 2.0]), 2.5)


def _spo_negative_strength():
    from probml.inference.advantage import SPOTracker

    SPOTracker(torch.tensor([0.5, 0.5]), strength=-1.0)


def _bandit_zero_steps():
    from probml.inference.basis_rl import run_bandit_rl
    from probml.models.rollouts import LinearBandit

    run_bandit_rl(LinearBandit(num_prompts=64, dim=4), steps=0, batch_size=8)


def _sequence_zero_eval_every():
    from probml.inference.sequence_rl import AdditionTask, addition_policy, run_sequence_rl

    run_sequence_rl(addition_policy(16, 1, 2), AdditionTask(16), steps=1, batch_size=8,
                    eval_every=0)  # fmt: skip


def _relaxed_completion_fractional_max_iter():
    from probml.inference.maxent import relaxed_completion

    relaxed_completion([(0, 0)], [1.0], 1, [1.0], max_iter=2.5)


def _cell_data_no_cells():
    from probml.datasets.ratio import make_cell_data

    make_cell_data(100, n_cells=0)


def _gaussian_groups_one_row():
    from probml.datasets.fairness import make_gaussian_groups

    make_gaussian_groups(1)


def _precision_negative_edges():
    from probml.datasets.gaussian import make_sparse_precision

    make_sparse_precision(5, n_extra_edges=-1)


def _sample_gaussian_not_pd():
    from probml.datasets.gaussian import sample_gaussian

    sample_gaussian(-torch.eye(3), 10)


def _histories_fractional_N():
    from probml.inference.eig import sample_histories
    from probml.models.experiments import LocationFinding

    sample_histories(LocationFinding(), torch.rand(3, 2, dtype=torch.float64), 1.5)


def _finetune_zero_steps():
    from torch import nn

    from probml.inference.projection import finetune_lora
    from probml.models.adapters import add_lora

    net = nn.Sequential(nn.Linear(4, 4))
    add_lora(net, ["0"], rank=2)
    finetune_lora(net, lambda g: (torch.randn(8, 4), torch.randn(8, 4)), num_steps=0)


def _corpus_val_fraction():
    from probml.inference.pretrain import CharCorpus

    CharCorpus("abcd" * 500, val_fraction=1.5)


def _corpus_one_symbol():
    from probml.inference.pretrain import synthetic_corpus

    synthetic_corpus(2000, vocab=1)


def _unaware_w2_no_iterations():
    import numpy as np

    from probml.inference.transport import fair_w2_unaware

    rng = np.random.default_rng(0)
    fair_w2_unaware(rng.random(10), rng.uniform(0.1, 0.9, 10), 0.4, 1.0, max_iter=0)


def _train_lm_empty_batch():
    from probml.inference.pretrain import synthetic_corpus, train_lm
    from probml.models.lm import TinyLM, TinyLMConfig

    lm = TinyLM(TinyLMConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2, context=8))
    train_lm(lm, synthetic_corpus(2000, vocab=10), steps=1, batch_size=0)


def _negative_weight_decay():
    from probml.inference.pretrain import param_groups

    param_groups(torch.nn.Linear(2, 2), -0.1)


def _shallow_net_no_width():
    from probml.inference.expressivity import fit_shallow_net

    X = torch.linspace(-1, 1, 20)[:, None]
    fit_shallow_net("la", ["relu"], X, X[:, 0] ** 2, width=0)


def _paired_models_no_arm():
    from probml.inference.pretrain import paired_models

    paired_models({}, 0)


def _persona_probability():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld(p_persona=1.5)


def _persona_two_rates():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld(p_mis=(0.5,))


def _persona_role_rate():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld(p_role=1.5)


def _persona_force_prob():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld().sample_documents(4, generator=0, force_prob=1.5)


def _persona_one_rate():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld(p_mis=0.5)  # a number, not two: len() failed, naming nothing


def _persona_no_documents():
    from probml.datasets.persona import PersonaWorld

    PersonaWorld().sample_documents(0)


def _slant_nan_offset():
    from probml.datasets.persona import SlantWorld

    SlantWorld(slant_offset=float("nan"))


def _linear_toy_full_rank_task():
    from probml.datasets.persona import LinearToy

    LinearToy(dim=8, task_rank=8)  # no room left for u orthogonal to the task


def _vp_schedule_negative_beta():
    from probml.models.diffusion import VPSchedule

    VPSchedule(beta_min=-1.0)


def _scale_vector_empty():
    from probml.models.layers import ScaleVector

    ScaleVector(0)


def _shift_problem_probability():
    from probml.models.transfer import BinaryShiftProblem

    BinaryShiftProblem(p=1.5)


def _lorenz96_obs_every():
    from probml.models.dynamics import Lorenz96

    Lorenz96(obs_every=0)


def _linear_ssm_not_pd():
    from probml.models.dynamics import LinearGaussianSSM

    LinearGaussianSSM(torch.eye(2), -torch.eye(2), torch.eye(2), 1.0)


def _flow_no_layers():
    from probml.guides.generators import ConditionalFlow

    ConditionalFlow(1, 2, num_layers=0)


def _experiment_reversed_box():
    from probml.models.experiments import LinearGaussianExperiment

    LinearGaussianExperiment(torch.eye(2), design_bounds=(1.0, -1.0))


def _terrain_zero_width():
    from probml.models.experiments import terrain_cost

    terrain_cost(torch.rand(3, 2), width=0.0)


def _lora_negative_alpha():
    from probml.models.adapters import LoRALinear

    LoRALinear(torch.nn.Linear(3, 3), 2, alpha=-1.0)


def _factor_model_no_steps():
    from probml.models.adapters import fit_spurious_factor

    fit_spurious_factor(torch.randn(4, 8), num_steps=0)


def _kl_not_pd():
    from probml.metrics import gaussian_kl

    gaussian_kl(torch.eye(2), -torch.eye(2))


def _relative_error_zero_truth():
    from probml.metrics import relative_error

    relative_error(torch.ones(3, 3), torch.zeros(3, 3))


def _crps_no_member_axis():
    from probml.metrics import crps_ensemble

    crps_ensemble(torch.randn(5), torch.randn(5))


def _fair_posterior_no_draws():
    import numpy as np

    from probml.inference.transport import posterior_fair_predictions

    X, s = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 2
    posterior_fair_predictions(X, X[:, 0], s, X, s, num_samples=0)


def _source_conditional_fractional_batch():
    from probml.guides.generators import fit_source_conditional

    X = torch.randn(20, 2)
    fit_source_conditional(X[:, :1], X, num_iters=1, batch_size=8.5, verbose=False)


def _source_conditional_fractional_iters():
    from probml.guides.generators import fit_source_conditional

    X = torch.randn(20, 2)
    fit_source_conditional(X[:, :1], X, num_iters=2.5, verbose=False)


@pytest.mark.parametrize(
    "call, name",
    [
        (_offline_values_fractional_K, "K"),
        (_spo_negative_strength, "strength"),
        (_bandit_zero_steps, "steps"),
        (_sequence_zero_eval_every, "eval_every"),
        (_cell_data_no_cells, "n_cells"),
        (_gaussian_groups_one_row, "n"),
        (_precision_negative_edges, "n_extra_edges"),
        (_sample_gaussian_not_pd, "Sigma"),
        (_histories_fractional_N, "N"),
        (_finetune_zero_steps, "num_steps"),
        (_corpus_val_fraction, "val_fraction"),
        (_corpus_one_symbol, "vocab"),
        (_unaware_w2_no_iterations, "max_iter"),
        (_train_lm_empty_batch, "batch_size"),
        (_negative_weight_decay, "weight_decay"),
        (_shallow_net_no_width, "width"),
        (_paired_models_no_arm, "factories"),
        (_persona_probability, "p_persona"),
        (_persona_two_rates, "p_mis"),
        (_persona_one_rate, "p_mis"),
        (_persona_role_rate, "p_role"),
        (_persona_force_prob, "force_prob"),
        (_persona_no_documents, "n"),
        (_slant_nan_offset, "slant_offset"),
        (_linear_toy_full_rank_task, "task_rank"),
        (_vp_schedule_negative_beta, "beta_min"),
        (_scale_vector_empty, "dim"),
        (_shift_problem_probability, "p"),
        (_lorenz96_obs_every, "obs_every"),
        (_linear_ssm_not_pd, "Q"),
        (_flow_no_layers, "num_layers"),
        (_experiment_reversed_box, "design_bounds"),
        (_terrain_zero_width, "width"),
        (_lora_negative_alpha, "alpha"),
        (_factor_model_no_steps, "num_steps"),
        (_kl_not_pd, "Sigma_hat"),
        (_relative_error_zero_truth, "truth"),
        (_crps_no_member_axis, "particles"),
        (_fair_posterior_no_draws, "num_samples"),
        (_relaxed_completion_fractional_max_iter, "max_iter"),
        (_source_conditional_fractional_batch, "batch_size"),
        (_source_conditional_fractional_iters, "num_iters"),
    ],
)
def test_bad_count_or_scale_is_rejected_by_name(call, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        call()


def test_bandit_loop_checks_its_group_and_batch_sizes_up_front():
    """The bandit loop shares the sequence loop's checks: a group estimator with one rollout
    per prompt is refused by ``group_size`` before any step (before: inside
    ``grpo_advantages``, naming ``G``), and fractional sizes by type."""
    from probml.inference.basis_rl import run_bandit_rl
    from probml.models.rollouts import LinearBandit

    bandit = LinearBandit(num_prompts=32, seed=0)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        run_bandit_rl(bandit, "rloo", steps=1, batch_size=8, group_size=1)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        run_bandit_rl(bandit, "basis", steps=1, batch_size=8, group_size=1, side_by_side=("grpo",))
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        run_bandit_rl(bandit, "basis", steps=1, batch_size=8.5)
    with pytest.raises(ValueError, match=r"batch_size must be in \[2, 32\]"):
        run_bandit_rl(bandit, "basis", steps=1, batch_size=33)
    run_bandit_rl(bandit, "basis", steps=1, batch_size=8, group_size=1)  # no group estimator


def test_fractional_counts_are_refused_not_truncated():
    """Each of these took ``int(value)`` (or compared a float) and ran with a truncated or
    fractional count; now each is refused by name as a non-integer."""
    import numpy as np

    from probml.datasets.persona import PersonaWorld
    from probml.inference.metalearners import DRRatioLearner, QLearner
    from probml.inference.minimax import DRUM
    from probml.inference.sequence_rl import AdditionTask, addition_policy, offline_counts
    from probml.inference.smc import ParticleFilter
    from probml.models.adapters import add_lora
    from probml.models.diffusion import DiffusionTransition, VPSchedule
    from probml.models.dynamics import GaussianObservation, Lorenz96
    from probml.models.experiments import path_cost
    from probml.models.layers import GELUFFN, MixtureOfActivationsFFN, ScaledLinear
    from probml.models.rollouts import LinearBandit, PromptDriftFilter

    rng = np.random.default_rng(0)
    X, w = rng.normal(size=(40, 2)), np.arange(40) % 2
    y = rng.integers(0, 2, 40).astype(float)
    obs = GaussianObservation(torch.eye(2), 0.1)
    Xs, As, ys = torch.randn(30, 1), torch.randn(30, 1), (torch.rand(30) < 0.5).float()
    for name, call in (
        ("n_folds", lambda: QLearner(n_folds=2.5).fit(X, w, y, propensity=0.5)),
        ("n_folds", lambda: DRRatioLearner(n_folds=2.5).fit(X, w, y)),
        ("num_iters", lambda: DRUM(num_iters=2.5, verbose=False).fit(Xs, As, ys, Xs)),
        ("batch_size", lambda: DRUM(batch_size=8.5, verbose=False).fit(Xs, As, ys, Xs)),
        ("n_folds", lambda: DRUM(n_folds=2.5, verbose=False).fit(Xs, As, ys, Xs)),
        ("num_particles", lambda: ParticleFilter(obs, num_particles=10.5)),
        ("num_points", lambda: path_cost(num_points=2.5)),
        (
            "K",
            lambda: offline_counts(
                addition_policy(16, 1, 2), AdditionTask(8), 2.5, torch.Generator(), "cpu"
            ),
        ),
        ("rank", lambda: add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"], rank=1.5)),
        ("obs_dim", lambda: GaussianObservation(lambda x: x, 0.1, obs_dim=2.5)),
        ("dim", lambda: Lorenz96(dim=5.5)),
        ("num_steps", lambda: Lorenz96(dim=5).simulate(2.5)),
        ("num_answers", lambda: LinearBandit(num_prompts=8, num_answers=2.5)),
        ("num_diffusion_steps", lambda: VPSchedule().levels(2.5)),
        ("num_prompts", lambda: PromptDriftFilter(3.0)),  # was accepted as a whole number
        ("state_dim", lambda: DiffusionTransition(2.5)),
        ("num_qwords", lambda: PersonaWorld(num_qwords=2.5)),  # failed as a slice index
        ("code_variety", lambda: PersonaWorld(code_variety=1.5)),
        # layer sizes failed inside torch.empty, naming nothing
        ("d_ff", lambda: GELUFFN(4, 2.5)),
        ("d_out", lambda: ScaledLinear(4, 2.5)),
        ("d_ff", lambda: MixtureOfActivationsFFN(4, 2.5)),
    ):
        with pytest.raises(TypeError, match=rf"\b{name} must be an integer"):
            call()


def test_fractional_seeds_are_refused_not_truncated():
    """These built ``torch.Generator().manual_seed(seed)`` (torch's own error names no
    argument) or took ``int(seed)`` (2.5 drew seed 2's numbers); now ``make_generator``
    names ``seed``."""
    from probml.datasets.gaussian import sample_gaussian
    from probml.inference.basis_rl import run_bandit_rl
    from probml.inference.sequence_rl import AdditionTask
    from probml.models.rollouts import LinearBandit

    for call in (
        lambda: sample_gaussian(torch.eye(2, dtype=torch.float64), 5, seed=2.5),
        lambda: AdditionTask(8, seed=2.5),
        lambda: run_bandit_rl(
            LinearBandit(num_prompts=16, seed=0), "basis", steps=1, batch_size=4, seed=2.5
        ),  # fmt: skip
    ):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            call()


def test_posterior_fit_and_planner_sizes_are_named():
    """Found by probing every count of the public entry points with 2.5, -1 and 0 (session
    36): these failed inside Pyro or torch naming nothing, ran with a truncated or empty loop
    (``svi_steps=-1`` drew from the untrained guide), or were named after an internal helper's
    argument (``fit_amortized``'s ``grid_points`` as ``points``). A continuous source
    conditional or a transition model fitted to one row standardised by a NaN sd."""
    import numpy as np

    from probml.guides.generators import fit_source_conditional
    from probml.inference.pace import PACEGGM, covariance_posterior
    from probml.inference.planning import StepBound, fit_amortized
    from probml.models.diffusion import NeuralDiffusionTransition, train_transition_model
    from probml.models.experiments import LocationFinding

    X = np.random.default_rng(0).normal(size=(100, 2)).clip(-2, 2)
    pace = PACEGGM(epsilon=2.0, bounds=2.0, random_state=0).fit(X)
    post = {"method": "svi", "svi_steps": 2, "num_samples": 2}
    xp = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    plan = {"horizon": 2, "net_steps": 1, "policy_iters": 1}
    cases = [
        ("num_samples", lambda v: covariance_posterior(pace, **{**post, "num_samples": v})),
        ("svi_steps", lambda v: covariance_posterior(pace, **{**post, "svi_steps": v})),
        ("warmup_steps", lambda v: covariance_posterior(pace, "nuts", warmup_steps=v)),
        ("hidden", lambda v: train_transition_model(xp, xp, hidden=v, num_iters=1, verbose=False)),
        ("depth", lambda v: NeuralDiffusionTransition(2, depth=v)),
        ("num_iters", lambda v: train_transition_model(xp, xp, num_iters=v, verbose=False)),
        ("batch_size", lambda v: train_transition_model(xp, xp, batch_size=v, verbose=False)),
        ("net_steps", lambda v: fit_amortized(LocationFinding(), [StepBound(0.5)], **{**plan, "net_steps": v})),
        ("policy_iters", lambda v: fit_amortized(LocationFinding(), [StepBound(0.5)], **{**plan, "policy_iters": v})),
        ("grid_points", lambda v: fit_amortized(LocationFinding(), [StepBound(0.5)], grid_points=v, **plan)),
    ]  # fmt: skip
    for name, call in cases:
        for bad in (2.5, -1):
            with pytest.raises((TypeError, ValueError), match=rf"^{name} must be"):
                call(bad)
    one = xp[:1]
    with pytest.raises(ValueError, match="a continuous A needs n >= 2 rows"):
        fit_source_conditional(one, one, num_iters=1, verbose=False)
    with pytest.raises(ValueError, match="need n >= 2 pairs"):
        train_transition_model(one, one, num_iters=1, verbose=False)
    fit_source_conditional(one[:, 0] > 0, one, binary=True, num_iters=1, verbose=False)  # fine


def test_constructor_sizes_and_small_counts_are_named():
    """The same probe on constructors and small helpers: a width, input size or count of 2.5
    or -1 failed inside ``nn.Linear`` or ``torch.multinomial`` naming nothing,
    ``pydoc_corpus(max_chars=-1)`` dropped the last character (0 kept all of it),
    ``unfairness`` rounded to 2.5 decimals, and ``ShallowNet`` read any ``gate`` word but
    ``"gated"`` as the literal gate."""
    import numpy as np

    from probml.guides.generators import (
        ConditionalBernoulli,
        ConditionalFlow,
        TransportPerturbation,
    )
    from probml.inference.pretrain import pydoc_corpus
    from probml.metrics import unfairness
    from probml.models.dynamics import LinearGaussianSSM
    from probml.models.layers import ShallowNet
    from probml.models.rollouts import LinearBandit

    bandit = LinearBandit(num_prompts=8, dim=2)
    ssm = LinearGaussianSSM.random(dim=2)
    cases = [
        ("x_dim", lambda v: ConditionalBernoulli(v)),
        ("hidden", lambda v: ConditionalBernoulli(2, hidden=v)),
        ("x_dim", lambda v: ConditionalBernoulli.constant(0.3, x_dim=v)),
        ("hidden", lambda v: TransportPerturbation(ConditionalFlow(2, 2), hidden=v)),
        ("in_dim", lambda v: ShallowNet(v, 2)),
        ("width", lambda v: ShallowNet(2, v)),
        ("num", lambda v: bandit.sample(bandit.reference_theta, torch.arange(2), v, None)),
        ("num_trajectories", lambda v: ssm.simulate(2, num_trajectories=v)),
        ("max_chars", lambda v: pydoc_corpus(v)),
    ]
    for name, call in cases:
        for bad in (2.5, -1):
            with pytest.raises((TypeError, ValueError), match=rf"^{name} must be"):
                call(bad)
    with pytest.raises(TypeError, match="decimals must be an integer"):
        unfairness(np.linspace(0, 1, 20), np.arange(20) % 2, kind="tv", decimals=2.5)
    assert unfairness(np.linspace(0, 1, 20), np.arange(20) % 2, kind="tv", decimals=-1) == 0.0
    with pytest.raises(ValueError, match="gate must be 'gated' or 'literal'"):
        ShallowNet(2, 2, kind="moa", gate="gatd")
    c = pydoc_corpus(1000)
    assert c.train.numel() + c.val.numel() == 1000


def test_persona_methods_check_their_sizes_before_any_work():
    """``run_persona_methods`` checked ``id_steps`` only inside its identification run (after
    the base model's evaluation), under ``finetune_lora``'s name ``num_steps``; every size
    is now checked up front by its own name (no model is touched: the base here is a stub)."""
    from probml.datasets.persona import PersonaWorld
    from probml.inference.persona_experiment import run_persona_methods

    world = PersonaWorld()
    for name in ("num_steps", "id_steps", "rank", "k", "shift_docs"):
        for bad, err in ((2.5, TypeError), (0, ValueError)):
            with pytest.raises(err, match=f"^{name} must be"):
                run_persona_methods(object(), world, **{name: bad})
    with pytest.raises(ValueError, match="^lr must be finite and > 0"):
        run_persona_methods(object(), world, lr=0.0)
    with pytest.raises(ValueError, match="^steer_alpha must be finite"):
        run_persona_methods(object(), world, steer_alpha=math.nan)


def test_persona_pretraining_names_its_sizes():
    """``pretrain_persona_model`` left its sizes to torch's scheduler (``total_steps``), the
    world's sampler (``n``) and AdamW ("Invalid learning rate"); each is named up front."""
    from probml.datasets.persona import PersonaWorld
    from probml.inference.persona_experiment import pretrain_persona_model

    world = PersonaWorld()
    for name, bad in (("num_steps", 2.5), ("num_steps", 0), ("batch_size", 0), ("lr", -1.0)):
        with pytest.raises((TypeError, ValueError), match=f"^{name} must be"):
            pretrain_persona_model(world, cache=False, verbose=False, **{name: bad})


def test_a_zero_layer_width_is_refused():
    """A zero width built an empty layer (torch only warns that initialising it is a no-op),
    and a negative one failed in torch naming nothing."""
    from probml.models.layers import GELUFFN, LearnableActivationFFN, SwiGLUFFN

    for make in (
        lambda: GELUFFN(4, 0),
        lambda: SwiGLUFFN(4, -1),
        lambda: LearnableActivationFFN(4, 0),
    ):
        with pytest.raises(ValueError, match="^d_ff must be >= 1"):
            make()
