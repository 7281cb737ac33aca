"""Inference routines: importance sampling, SMC, estimators, planners, OT, DP."""
