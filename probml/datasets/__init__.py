"""Synthetic generators with known ground truth and loaders of data shipped inside packages."""
