"""Step 04, evaluate: the run's system against its baselines on the test split, and the general-behaviour probe.

The notebook ``04_evaluate`` and ``tunebook evaluate`` call ``evaluate_run``.
"""
