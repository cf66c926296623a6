"""Targets and losses as pure functions."""
