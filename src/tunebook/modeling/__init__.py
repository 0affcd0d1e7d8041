"""Models and how they answer: loading, prompts, decoding, prediction, classical models, the decision rule.

``system`` is the one code path every step, the served model and monitoring answer through.
"""
