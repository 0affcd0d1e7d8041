"""Trainer callbacks: the live loss curve in a notebook and a per-step timer."""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tunebook.core.plots import loss_curve


class QuietProgress(ProgressCallback):
    """The Trainer's progress bars on a terminal without its logged dictionaries (``{'loss': ...}``) printed under
    them (the Trainer keeps them in its log history, which 03 draws as the loss curve)."""

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        """Print nothing (the Trainer keeps every log in ``state.log_history``)."""


class LiveLossCurve(TrainerCallback):
    """Redraws the training curve in the notebook as losses are logged, at most every ``min_interval`` seconds apart
    from validation passes and the end (does nothing outside IPython)."""

    def __init__(self, before: float | None = None, min_interval: float = 2.0):
        self.before = before
        self.min_interval = min_interval
        self.handle = None
        self.drawn_at = float("-inf")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Update the figure with the latest log history (training-loss logs only if the last redraw is old enough)."""
        if "eval_loss" in (logs or {}) or time.perf_counter() - self.drawn_at >= self.min_interval:
            self._draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        """Draw the final curve."""
        self._draw(state)

    def _draw(self, state) -> None:
        try:
            # deferred: IPython and matplotlib load only for the live loss curve in a notebook
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt  # deferred: as IPython above

        history = ([{"step": 0, "eval_loss": self.before}] if self.before is not None else []) + state.log_history
        fig = loss_curve(history)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)
        self.drawn_at = time.perf_counter()


class StepTimer(TrainerCallback):
    """Records the wall time of every optimiser step (validation excluded)."""

    def __init__(self):
        self.steps: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        """Start the clock (after waiting for a GPU to finish queued work)."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        """Stop the clock."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.steps.append(time.perf_counter() - self._started)

    def steady(self) -> float:
        """Median step time after the first (which carries one-off warm-up)."""
        timed = sorted(self.steps[1:] or self.steps)
        return timed[len(timed) // 2] if timed else float("nan")
