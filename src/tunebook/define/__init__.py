"""Step 00, define the job: the decision frame (is fine-tuning the right tool?) and the step that records it.

The notebook ``00_define_the_job`` and ``tunebook define`` call ``define_job``.
"""
