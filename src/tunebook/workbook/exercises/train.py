"""The exercises of 03 · train: each check works out the right answer from the run folder."""

from __future__ import annotations

from typing import Any

from tunebook.core.runfolder import RunFolder
from tunebook.workbook.exercises.checking import (
    Feedback,
    as_bool,
    as_number,
    exercise,
    not_applicable,
    same_number,
)


@exercise("True or False: is the validation loss after training lower than before?")
def check_validation_loss(answer: Any, run: RunFolder) -> Feedback:
    """Whether training lowered the validation loss (the manifest's before and after)."""
    manifest = run.read_manifest()
    truth = manifest.val_loss_after < manifest.val_loss_before
    said = as_bool(answer)
    if said is None:
        return Feedback(False, "answer True or False.")
    figures = (
        f"validation loss {manifest.val_loss_before:.4f} before training, {manifest.val_loss_after:.4f} "
        f"after (best step {manifest.best_step} of {manifest.steps})"
    )
    if said == truth:
        return Feedback(
            True,
            figures
            + (
                "; a lower loss is not yet a better job: 04 judges that."
                if truth
                else "; the adapter did not learn the job yet: more steps or data?"
            ),
        )
    return Feedback(
        False, "compare the two numbers printed after training: 'validation loss: X before training -> Y after'."
    )


@exercise("a number: by what factor do the trainable parameters change when LORA_R doubles?")
def check_lora_rank_doubled(answer: Any, run: RunFolder) -> Feedback:
    """The factor by which doubling the LoRA rank changes the trainable parameters (2; 1 for a full fine-tune)."""
    manifest = run.read_manifest()
    trainable, r = manifest.trainable_parameters, manifest.config.get("lora_r")
    truth = 1.0 if manifest.full_fine_tune else 2.0
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number, e.g. 4.")
    if manifest.full_fine_tune:
        if same_number(said, truth):
            return Feedback(True, f"this run trained every weight ({trainable:,}); LORA_R does not apply.")
        return Feedback(
            False,
            "this run trained every weight (METHOD full), with no adapter: does LORA_R change how many weights train?",
        )
    if same_number(said, truth):
        return Feedback(
            True,
            f"each adapted layer gains r x (inputs + outputs) weights, linear in r: this run's "
            f"r = {r} trains {trainable:,}, r = {2 * r} would train {2 * trainable:,}.",
        )
    return Feedback(
        False,
        "LoRA adds two thin matrices per layer, A (r x inputs) and B (outputs x r). How does their size grow with r?",
    )


@exercise("a number: the factor by which the adapter's scale (LORA_ALPHA / LORA_R) changes when LORA_R doubles.")
def check_lora_scaling(answer: Any, run: RunFolder) -> Feedback:
    """The factor by which doubling r (same alpha) changes the adapter's scale alpha / r, from the manifest."""
    config = run.read_manifest().config
    alpha, r = config.get("lora_alpha"), config.get("lora_r")
    if not alpha or not r:
        return not_applicable("the manifest records no LoRA rank or alpha")
    now, doubled = alpha / r, alpha / (2 * r)
    truth = doubled / now
    said = as_number(answer)
    if said is None:
        return Feedback(False, "answer with a number, e.g. 4.")
    if not same_number(said, truth, 1e-3):
        return Feedback(
            False,
            "the update is multiplied by LORA_ALPHA / LORA_R. What happens to a fraction when "
            "its denominator doubles?",
        )
    note = " (this run trained every weight, so no adapter was scaled)" if config.get("method") == "full" else ""
    return Feedback(
        True,
        f"this run's scale is alpha {alpha} / r {r} = {now:g}; with r = {2 * r} it would be "
        f"{doubled:g}{note}. Twice the capacity speaks half as loud unless alpha doubles too, which is "
        "why the two are set together.",
    )
