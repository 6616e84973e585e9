"""Sweeps, leaderboards and reproduce targets."""
