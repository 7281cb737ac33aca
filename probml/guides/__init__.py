"""Guides and proposal/generator networks a user can reuse with their own models."""
