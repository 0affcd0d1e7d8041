"""Step 03, train: the recipe, the Trainer with shared-prefix packing, replay, hybrid (RAFT) prompts, methods.

The notebook ``03_train_qlora`` and ``tunebook train`` call ``train_run_folder``.
"""
