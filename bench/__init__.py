"""Benchmarks: each prints its results as ratios against a baseline measured in the same run."""
