"""Workshop exercises: one ``check_...`` per exercise at the end of each notebook, and the learner notebooks.

Every check takes the learner's answer and the run folder, works out the right answer from that run's artifacts
(never a number written down here, so it holds for any run: the real model or a tiny test one) and returns
``Feedback``. An answer left as ``...`` gets the hint and never an error. No check trains or re-runs a step; the
costliest one bootstraps one set of predictions.

The notebooks in ``notebooks/`` hold the solutions: a cell tagged ``solution`` assigns each ``answer_NN_x``, as a
literal or as an expression over ``run`` that reads the answer from the run folder. ``python -m tunebook.workbook.exercises``
writes the learner notebooks (``workshop/learner/``): the same notebooks with each solution replaced by
``answer_NN_x = ...`` and the solution line's comment as the hint.

One module per step (``define`` ... ``monitor``) holds that notebook's checks, all built on ``checking``;
``learner`` writes the learner notebooks.
"""

from tunebook.workbook.exercises.baseline import (
    WHY_VALIDATION,
    check_chosen_variant,
    check_escalations_missed,
    check_why_choose_on_validation,
)
from tunebook.workbook.exercises.checking import Feedback, exercise
from tunebook.workbook.exercises.clean import (
    check_conflict_policy,
    check_cross_split_near_duplicates,
    check_near_dup_threshold,
    check_rows_removed,
)
from tunebook.workbook.exercises.define import (
    check_costliest_mistake,
    check_frame_if_prompting_suffices,
    check_targets_with_one_must_never,
)
from tunebook.workbook.exercises.evaluate import (
    check_bigger_test_split,
    check_difference_is_real,
    check_mcnemar_examples,
)
from tunebook.workbook.exercises.learner import (
    EXERCISE_TAG,
    LEARNER_DIR,
    SOLUTION_TAG,
    _answer_names,
    learner_notebook,
    learner_notebooks_out_of_date,
    main,
    notebook_text,
    stub_source,
    write_learner_notebooks,
)
from tunebook.workbook.exercises.monitor import (
    LOOSER_P_VALUE,
    check_fired_signals,
    check_looser_p_values,
    check_text_auc_baseline,
)
from tunebook.workbook.exercises.release import check_promotion, check_require_targets, check_targets_missed
from tunebook.workbook.exercises.train import check_lora_rank_doubled, check_lora_scaling, check_validation_loss

__all__ = [
    "Feedback",
    "exercise",
    "check_costliest_mistake",
    "check_frame_if_prompting_suffices",
    "check_targets_with_one_must_never",
    "check_rows_removed",
    "check_near_dup_threshold",
    "check_conflict_policy",
    "check_cross_split_near_duplicates",
    "check_chosen_variant",
    "check_why_choose_on_validation",
    "check_escalations_missed",
    "WHY_VALIDATION",
    "check_validation_loss",
    "check_lora_rank_doubled",
    "check_lora_scaling",
    "check_difference_is_real",
    "check_mcnemar_examples",
    "check_bigger_test_split",
    "check_targets_missed",
    "check_promotion",
    "check_require_targets",
    "check_fired_signals",
    "check_text_auc_baseline",
    "check_looser_p_values",
    "LOOSER_P_VALUE",
    "EXERCISE_TAG",
    "LEARNER_DIR",
    "SOLUTION_TAG",
    "_answer_names",
    "learner_notebook",
    "learner_notebooks_out_of_date",
    "main",
    "notebook_text",
    "stub_source",
    "write_learner_notebooks",
]
