"""Step 02, prove the baseline: every cheap variant on validation and test, the best chosen on validation.

The notebook ``02_prove_the_baseline`` and ``tunebook baseline`` call ``prove_baseline``.
"""
