"""Step 05, release: checks as served, the gate, the model card and registry version, knowledge-only releases.

The notebook ``05_release`` and ``tunebook release`` call ``release_run_folder``.
"""
