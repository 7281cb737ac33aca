"""Counts and scales that were once accepted without a word: a zero or negative count (an empty
run, a planner with nothing to choose), a fractional one (silently truncated), a negative
pseudo-count or edge count, a matrix with no Cholesky factor. Each must be rejected with an
error that names the argument."""

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
    ],
)
def test_bad_count_or_scale_is_rejected_by_name(call, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        call()
