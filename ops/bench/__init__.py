"""`darkroom bench`: Darkroom measured against its baselines, side by side, in one run.

Every case starts what it measures itself (a private broker, a `darkroom run` stack, a bare
baseline process), warms up, repeats, and reports medians and p95s. Figures are reported as
ratios against a baseline measured in the same run, so they hold on a noisy machine.
"""
