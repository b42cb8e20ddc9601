"""What a sweep prints: quiet libraries, one line per event, one number format.

``quiet`` silences Ray, Tune, Optuna and MLflow chatter (Tune's config box and
TensorBoard hint, Ray's token warning, Optuna's "new study created" line) unless
``--verbose``. ``ProgressCallback`` prints one line per trial event (started, reported,
stopped by ASHA, finished, failed) with separate counts and a smoothed ETA.
``PretrainProgress`` turns the pretraining task's log steps into lines with an ETA.
Every LPIPS shown anywhere goes through :func:`fmt_metric`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

from ray.tune import Callback

from sweeper.failures import failure_of


def fmt_metric(name: str, value) -> str:
    """The one format of a metric value in terminal output: the ranking table's decimals
    (sweeper/select.py: LPIPS 5, PSNR 2, SSIM 4), so a number reads the same everywhere."""
    from sweeper.select import _DIGITS

    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "-" if math.isnan(v) else str(v)
    digits = _DIGITS.get(name if name.startswith("final_") else f"final_{name}")
    return f"{v:.{digits}f}" if digits is not None else f"{v:.4g}"


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


VERBOSE = False  # set by quiet(); read by ray_logging_level()


def quiet(verbose: bool) -> None:
    """Library log levels and output switches for this process (and Ray workers it starts)."""
    global VERBOSE
    VERBOSE = verbose
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers up at import
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run" lines
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new engine prints the box and hint at any verbosity
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Tune logs each failed trial task with its traceback; our own line names the reason.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    levels = {
        "ray": logging.ERROR,
        "ray.tune": logging.ERROR,
        "ray.train": logging.ERROR,
        "mlflow": logging.WARNING,
        "alembic": logging.WARNING,
        "optuna": logging.WARNING,
    }
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def ray_logging_level() -> int:
    """``ray.init(logging_level=...)``: Ray resets its logger level at init."""
    return logging.INFO if VERBOSE else logging.ERROR


# ------------------------------------------------------------------------- pretraining
class FileProgressReporter:
    """Trainer Reporter for the pretraining Ray task: one JSON line per log step in a file
    of the sweep folder, which the driver tails (the task's stdout does not reach it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "t": time.time(), **values}) + "\n")

    def validation(self, step, metrics, images, scores) -> None:
        self.metrics(step, metrics)

    def checkpoint(self, step, path) -> None:
        pass


def pretrain_line(rec: dict, total: int, start_t: float, first: Optional[dict]) -> str:
    """``pretrain step 40/150 (27%)  loss 0.0213  ETA 35 s`` from one progress record."""
    step, elapsed = int(rec["step"]), rec["t"] - start_t
    eta = "?"
    if first is not None and step > first["step"] and rec["t"] > first["t"]:
        rate = (step - first["step"]) / (rec["t"] - first["t"])  # steps/s since the first line
        eta = fmt_minutes((total - step) / rate)
    loss = rec.get("loss_pretrain_pixel")
    shown = f"  pixel loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    psnr = rec.get("val_psnr")
    shown += f"  val PSNR {fmt_metric('val_psnr', psnr)} dB" if psnr is not None else ""
    return (
        f"pretrain step {step}/{total} ({100 * step / max(1, total):.0f}%){shown}"
        f"  [{fmt_minutes(elapsed)}, ETA {eta}]"
    )


def wait_pretraining(ref, progress: Path, total: int, poll_s: float = 0.5, check=None):
    """Block on the pretraining task, printing each progress record as it appears.
    ``check``: called between waits (a pending signal raises there: a Python exception
    raised inside Ray's C++ wait would turn into a SystemError)."""
    import ray

    start, seen, first = time.time(), 0, None
    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        if check is not None:
            check()
        lines = progress.read_text().splitlines() if progress.is_file() else []
        for line in lines[seen:]:
            rec = json.loads(line)
            if "loss_pretrain_pixel" not in rec and "val_psnr" not in rec:
                continue
            print(pretrain_line(rec, total, start, first), flush=True)
            first = first or rec
        seen = len(lines)
        if ready:
            return ray.get(ref)


# ------------------------------------------------------------------------------ trials
class ProgressCallback(Callback):
    """One line per trial event; counts split into running, finished, stopped, failed;
    the ETA from an exponential moving average of the trained-steps rate."""

    ALPHA = 0.3  # weight of the newest rate sample

    def __init__(
        self,
        metric: str,
        mode: str,
        num_samples: int,
        total_steps: int,
        names: Optional[dict[str, str]] = None,
    ):
        self.metric, self.mode, self.n, self.total = metric, mode, num_samples, total_steps
        self.names = names or {}  # searched path -> short name, for the "started" line
        self.start = time.monotonic()
        self.best: Optional[tuple[float, str]] = None
        self.ended: dict[str, str] = {}  # trial id -> finished / stopped / failed
        self._rate: Optional[float] = None
        self._last: Optional[tuple[float, int]] = None

    def __setstate__(self, state: dict) -> None:  # a restored sweep restarts the clock
        self.__dict__.update({"names": {}, "ended": {}})  # pickles of the older callback lack them
        self.__dict__.update(state, start=time.monotonic(), _last=None, _rate=None)

    def _stamp(self) -> str:
        return f"[{(time.monotonic() - self.start) / 60:5.1f} min]"

    def _better(self, v: float) -> bool:
        return self.best is None or (v < self.best[0] if self.mode == "min" else v > self.best[0])

    def _counts(self, trials) -> str:
        ended = list(self.ended.values())
        running = sum(1 for t in trials if t.trial_id not in self.ended and t.status == "RUNNING")
        return (
            f"trials {len(trials)}/{self.n}: running {running}, finished {ended.count('finished')}, "
            f"stopped {ended.count('stopped')}, failed {ended.count('failed')}"
        )

    def eta(self, trials) -> str:
        """Remaining steps / smoothed rate; trials not yet created count a full budget."""
        trained = sum(int((t.last_result or {}).get("step", 0)) for t in trials)
        now = time.monotonic()
        if self._last is not None and now > self._last[0] and trained > self._last[1]:
            sample = (trained - self._last[1]) / (now - self._last[0])
            self._rate = sample if self._rate is None else self.ALPHA * sample + (1 - self.ALPHA) * self._rate
        if self._last is None or trained > self._last[1]:
            self._last = (now, trained)
        remaining = (
            sum(
                max(0, self.total - int((t.last_result or {}).get("step", 0)))
                for t in trials
                if t.trial_id not in self.ended
            )
            + max(0, self.n - len(trials)) * self.total
        )
        if not self._rate:
            return "?"
        return f"~{fmt_minutes(remaining / self._rate)}"

    def on_trial_start(self, iteration, trials, trial, **info):
        from sweeper.sweep_config import searched

        params = searched(trial.config)
        shown = ", ".join(f"{self.names.get(k, k)}={_short(v)}" for k, v in params.items())
        print(f"{self._stamp()} trial {trial.trial_id} started: {shown}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and self._better(v):
            self.best = (float(v), trial.trial_id)
        shown = "  ".join(
            f"{m} {fmt_metric(m, result.get(m))}"
            for m in ("val_lpips", "val_psnr", "val_ssim")
            if m in result
        )
        best = f"{fmt_metric(self.metric, self.best[0])} ({self.best[1]})" if self.best else "-"
        print(
            f"{self._stamp()} trial {trial.trial_id} step {result.get('step')}/{self.total}: {shown}"
            f" | {self._counts(trials)} | best {self.metric} {best} | ETA {self.eta(trials)}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = int((trial.last_result or {}).get("step", 0))
        reason = failure_of(trial.last_result)
        if reason:  # a divergence ends the trial itself (not an error): a failure, not an ASHA stop
            self.ended[trial.trial_id] = "failed"
            print(
                f"{self._stamp()} trial {trial.trial_id} failed, not retried: {reason[:300]} | "
                f"{self._counts(trials)}",
                flush=True,
            )
            return
        if step < self.total:
            self.ended[trial.trial_id] = "stopped"
            what = f"stopped by ASHA at step {step}/{self.total}"
        else:
            self.ended[trial.trial_id] = "finished"
            what = "finished"
        last = fmt_metric(self.metric, (trial.last_result or {}).get(self.metric))
        print(
            f"{self._stamp()} trial {trial.trial_id} {what} ({self.metric} {last}) | {self._counts(trials)}",
            flush=True,
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        step = int((trial.last_result or {}).get("step", 0))
        print(
            f"{self._stamp()} trial {trial.trial_id} lost its worker at step {step}: {error_reason(trial)};"
            f" retrying from its last checkpoint (retry {trial.num_failures} of {trial.max_failures})",
            flush=True,
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "failed"
        print(
            f"{self._stamp()} trial {trial.trial_id} failed: {error_reason(trial)} | {self._counts(trials)}",
            flush=True,
        )


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def error_reason(trial) -> str:
    """The last line of the trial's error file (the exception), else Ray's summary."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "unknown error (see the trial's error.txt)"
