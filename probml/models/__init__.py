"""Generative models: Pyro models, PyroModules, simulators, layers."""
