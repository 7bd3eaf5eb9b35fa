"""The segmentation trainer's safety rules, shared with the other trainers (fusion).

:class:`GuardedTraining` gives a trainer what :class:`~.train.Trainer` has, with the
very same code (its methods, not a copy):

- divergence detection: a loss that is not a number, non-finite weights, or a smoothed
  loss above ``divergence_factor`` times its best for ``divergence_window`` steps in a
  row stop the run with :class:`~.train.TrainingDiverged`; the weights of the last
  healthy step are restored and no model of the diverged steps is written
  (``Trainer._watch_loss`` / ``Trainer._diverge``);
- checkpoints every ``checkpoint_every`` steps *and* every ``checkpoint_every_s``
  seconds (:meth:`GuardedTraining.checkpoint_due`), never while the loss is running
  away, and on cancel and at the end (``Trainer._checkpoint``);
- honest metadata: :meth:`GuardedTraining.run_state` (``steps_done``, ``finished``,
  ``cancelled``, ``cancel_reason`` - e.g. "SIGTERM", set by the CLI's signal handler -,
  ``diverged``, ``diverged_at_step``) for ``training["last_run"]``.

A trainer using it has ``config`` (with ``lr``, ``checkpoint_every``,
``checkpoint_every_s``, ``divergence_factor``, ``divergence_window``), ``model``,
``history``, ``step``, ``out`` and ``save(path)``, and calls :meth:`start_guard` once
its model and history are set up.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from napari_cellfocus.engine.train import (
    SteppedTraining,
    Trainer,
    TrainProgress,
    finite_parameters,
)

__all__ = ["GuardedTraining", "check_guard_settings", "finite_parameters"]


def check_guard_settings(
    checkpoint_every: int, checkpoint_every_s: float, divergence_factor: float
) -> None:
    """ValueError for settings the guard cannot use (as ``TrainConfig`` checks them)."""
    if not (checkpoint_every_s >= 0 and checkpoint_every >= 0):
        raise ValueError(
            "checkpoint_every and checkpoint_every_s must be >= 0, got "
            f"{checkpoint_every} and {checkpoint_every_s}."
        )
    if not (divergence_factor == 0 or divergence_factor > 1):
        raise ValueError(f"divergence_factor must be > 1 (or 0 = off), got {divergence_factor}.")


class GuardedTraining(SteppedTraining):
    """Divergence watch, checkpoint rules and run state of :class:`~.train.Trainer`."""

    # The segmentation trainer's own implementation, on the same attributes.
    _watch_loss = Trainer._watch_loss
    _diverge_state = Trainer._diverge
    _checkpoint = Trainer._checkpoint

    def start_guard(self) -> None:
        """Set up the watch (after ``model`` and ``history`` exist)."""
        self.cancelled = False
        self.cancel_reason: str | None = None
        self.finished = False
        self.diverged = False
        self.diverged_at: int | None = None
        self._good_state = copy.deepcopy(self.model.state_dict())
        # smoothed loss, its best, steps in a row above the limit, and the (step, weights,
        # history length) of the last step whose loss was healthy
        self._ema: float | None = None
        self._best_ema = math.inf
        self._over = 0
        self._healthy: tuple[int, dict[str, torch.Tensor], int] = (0, self._good_state, 0)
        self._wrote_out = False
        self._last_save_t = time.monotonic()

    def _diverge(self, step: int, why: str) -> Exception:
        """``Trainer._diverge`` (restore, deal with ``out``), its message prefixed with
        :attr:`what` (e.g. "fusion training diverged at step 12: ...")."""
        err = self._diverge_state(step, why)
        return type(err)(f"{self.what} {err}") if self.what else err

    #: Word put before "training diverged ..." in the message ("" for none).
    what = ""

    def check_loss(self, value: float) -> None:
        """Before the update of step ``self.step + 1``: raise TrainingDiverged for a
        loss that is not a number or a smoothed loss that ran away."""
        cfg = self.config
        if not math.isfinite(value):
            raise self._diverge(self.step + 1, f"the loss is {value}")
        if self._watch_loss(value):
            raise self._diverge(
                self.step + 1,
                f"the smoothed loss ({self._ema:.4g}) stayed above "
                f"{cfg.divergence_factor:g}x its best ({self._best_ema:.4g}) for "
                f"{cfg.divergence_window} steps",
            )

    def check_weights(self) -> None:
        """After the update (``self.step`` counted): raise TrainingDiverged when the
        weights became non-finite (that step is undone), else keep them as the good ones."""
        if not finite_parameters(self.model):
            self.step -= 1
            raise self._diverge(self.step + 1, "the weights became non-finite")
        self._good_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def guarded_steps(
        self, step_loss: Callable[[], torch.Tensor], cosine: bool = True
    ) -> Iterator[TrainProgress]:
        """The training loop of a guarded trainer, yielding after every step: ``step_loss()``
        gives the loss of the next step (its batch drawn inside); with ``cosine`` the
        learning rate decays from ``lr`` to 5 % of it over ``steps``. Every step's loss and
        weights are checked, checkpoints are written when due, and closing the generator
        cancels (the last good weights kept and written to ``out``)."""
        cfg = self.config
        start = time.perf_counter()
        first = self.step
        self.model.train()
        try:
            while self.step < cfg.steps:
                self.optimizer.zero_grad(set_to_none=True)
                loss = step_loss()
                value = float(loss.detach())
                self.check_loss(value)
                loss.backward()
                if cosine:
                    frac = self.step / max(1, cfg.steps - 1)
                    for group in self.optimizer.param_groups:
                        group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
                self.optimizer.step()
                self.step += 1
                self.check_weights()
                self.history.append({"step": len(self.history) + 1, "loss": value})
                if self.checkpoint_due():
                    self._checkpoint()
                elapsed = time.perf_counter() - start
                rate = elapsed / max(1, self.step - first)
                yield TrainProgress(
                    self.step, cfg.steps, value, elapsed, rate * (cfg.steps - self.step)
                )
            self.finished = True
        except (GeneratorExit, KeyboardInterrupt):
            self.cancelled = True
            raise
        finally:
            self.finish()

    def checkpoint_due(self) -> bool:
        """Whether to write ``out`` now: every ``checkpoint_every`` steps or
        ``checkpoint_every_s`` seconds, never while the loss is above its limit."""
        cfg = self.config
        if self.out is None or self._over:
            return False
        by_steps = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
        by_time = bool(cfg.checkpoint_every_s) and (
            time.monotonic() - self._last_save_t >= cfg.checkpoint_every_s
        )
        return by_steps or by_time

    def finish(self) -> None:
        """In the steps generator's ``finally``: the last good weights back, and written
        to ``out`` (unless the run diverged: then ``_diverge`` dealt with it)."""
        self.model.load_state_dict(self._good_state)
        self.model.eval()
        if self.out is not None and not self.diverged:
            self._checkpoint()

    def run_state(self) -> dict[str, Any]:
        """What ``training["last_run"]`` records about how the run ended."""
        return {
            "steps_done": self.step,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "cancel_reason": self.cancel_reason if self.cancelled else None,
            "diverged": self.diverged,
            "diverged_at_step": self.diverged_at,
        }
