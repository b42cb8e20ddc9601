"""Sweep driver: ``srsweep run`` / ``srsweep resume`` on Ray Tune + Optuna + MLflow.

Flow: sweep YAML -> experiment dict (validated) -> checks that fail before any trial
(data, weights) -> one shared PSNR pretraining (a Ray task) -> bicubic baseline on the
validation images -> MLflow parent run -> Tuner (OptunaSearch + ASHA) -> results table
(Parquet), plots, the search winner (``sweeper.best``), then the confirmation
(``sweeper.confirm``: finalists retrained with fresh seeds, scored on ``data.test``).

The sweep folder is the Ray experiment folder; ``sweep.json`` in it is the typed
``SweepState`` (sweeper/state.py), written once here: ``resume``, ``best`` and the
callbacks read it, never the sweep YAML again.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sweeper.state import SweepState, absolute_paths  # noqa: E402  (after the environment defaults)


def _git_commit(path: Path) -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _bicubic_psnr(cfg) -> float:
    from trainables.evaluate import bicubic, evaluate
    from trainables.train import load_val_items
    from trainables.video_train import clip_bicubic, summary

    # clips: bicubic of the centre frame, averaged per sequence then overall (as val_psnr)
    return summary(evaluate(clip_bicubic(bicubic(cfg.scale)), load_val_items(cfg), cfg.scale), cfg).psnr


def prepare(
    sweep_path: Path,
    storage: str | Path,
    tracking_uri: str,
    address: Optional[str],
    overrides: tuple[str, ...] = (),
    tiny: bool = False,
    guard=None,
) -> SweepState:
    """Everything before the Tuner; returns the sweep state, written once to sweep.json
    (before the shared pretraining, which a resume redoes or continues). ``overrides``
    (``--set KEY=VALUE``) and ``tiny`` patch the sweep file before validation
    (sweeper/overrides.py), so the state holds them."""
    from sweeper import lifecycle
    from sweeper.driver import connect_ray
    from sweeper.overrides import patcher
    from sweeper.preflight import preflight_sweep
    from sweeper.sharing import new_sweep_dir
    from sweeper.storage import is_remote
    from sweeper.sweep_config import experiment_dict, load_sweep
    from sweeper.tracking import Tracker, flatten
    from trainables.backbones import build_info
    from trainables.config import validate
    from trainables.train import Trainer

    # the space's corners validate: a bad space fails here
    sweep = load_sweep(sweep_path, patcher(overrides, tiny, sweep_path))
    # Trials run in their own folders: paths are fixed against the launch folder now.
    raw = absolute_paths(experiment_dict(sweep, sweep_path), Path.cwd())
    cfg = validate(raw, source=str(sweep_path))
    # one line per problem, before anything is written or started
    preflight_sweep(
        sweep,
        sweep_path,
        cfg,
        storage if is_remote(storage) else Path(storage).resolve(),
        tracking_uri,
        address,
    )
    Trainer(cfg, Path("pretrain"))  # bad data / missing weights fail here, before anything is written
    info = connect_ray(address, cfg, sweep.resources)  # too small, bad token, files missing on a node
    sweep_dir = new_sweep_dir(storage, sweep.name)  # a new folder, or s3://bucket/prefix/NAME-TIME-xxxx
    if guard is not None:
        guard.sweep_dir = sweep_dir
        guard.reclaim()  # ray.init took SIGTERM over
    if cfg.train.pretrain_steps and not cfg.train.pretrained_g:
        raw = lifecycle.planned_pretrain(raw, sweep_dir)  # run below, once sweep.json exists
    bicubic_psnr = _bicubic_psnr(cfg)

    tracker = Tracker(tracking_uri)
    exp_id = lifecycle.experiment_id(tracker, sweep.experiment_name)
    tags = build_info(cfg.backbones.weights)
    parent = tracker.start_run(
        exp_id,
        f"{sweep.name} (sweep)",
        {
            **tags,
            "sweep_file": str(sweep_path),
            "git_commit": _git_commit(sweep_path.parent),
            **info.tags(),
            "ray_requested": address or "local",
            "sweep_dir": str(sweep_dir),
            "role": "sweep",
        },
    )
    if guard is not None:
        guard.parent = (tracking_uri, parent)  # closed FAILED if anything below fails
    tracker.log_params(
        parent,
        {
            **flatten(sweep.model_dump(mode="json", exclude={"space"}), "sweep."),
            "bicubic_val_psnr": f"{bicubic_psnr:.4f}",
        },
    )
    tracker.log_artifact(parent, sweep_path)
    tracker.log_dict(parent, {"space": sweep.model_dump(mode="json")["space"]}, "search_space.yaml")
    state = SweepState(
        sweep=sweep,
        sweep_file=str(sweep_path),
        experiment=raw,
        sweep_dir=str(sweep_dir),
        tracking_uri=tracking_uri,
        experiment_id=exp_id,
        parent_run_id=parent,
        bicubic_psnr=bicubic_psnr,
        total_steps=cfg.train.steps,
        address=address,
        tags=tags,
    )
    state.save()
    from sweeper.report import configure_dashboard

    configure_dashboard(tracker, state)
    print(
        f"sweep folder {sweep_dir}; MLflow parent run {parent} ({tracking_uri}); "
        f"bicubic val PSNR {bicubic_psnr:.2f} dB",
        flush=True,
    )
    lifecycle.ensure_pretrained(state, guard)
    return state


def _trainable(state: SweepState):
    from ray import tune

    from sweeper.trial import run_trial

    res = state.sweep.resources
    fn = tune.with_parameters(run_trial, state=state, threads=max(1, int(res.cpu)))
    return tune.with_resources(fn, {"cpu": res.cpu, "gpu": res.gpu})


def build_tuner(state: SweepState):
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from sweeper import signing
    from sweeper.callbacks import MLflowCallback
    from sweeper.constraints import BandConstraint, ConstrainedOptunaSearch, run_ref
    from sweeper.report import short_names
    from sweeper.sharing import local_dir
    from sweeper.space import compile_space, grid_points
    from sweeper.study import study_storage
    from sweeper.terminal import ProgressCallback

    sweep = state.sweep
    metrics = [m.name for m in sweep.objective.metrics]
    modes = [m.mode for m in sweep.objective.metrics]
    total, val_every = state.total_steps, state.base_config.train.val_every
    algo, seed = sweep.search.algorithm, sweep.search.seed
    param_space, search_alg, num_samples = None, None, sweep.budget.num_samples
    if algo == "grid":  # paper grids: every point, num_samples times (Ray's meaning), no sampler
        param_space = {"grid_point": tune.grid_search(grid_points(sweep.space))}
    else:
        sampler = {
            "tpe": lambda: TPESampler(seed=seed),
            "nsga2": lambda: NSGAIISampler(seed=seed),
            "random": lambda: RandomSampler(seed=seed),
        }[algo]()
        multi = len(metrics) > 1
        searcher, extra = ConstrainedOptunaSearch, {"total_steps": total, "mlflow_runs": run_ref(state)}
        if sweep.constraint is not None:  # Optuna learns the band from each trial's reached value
            extra["constraint"] = BandConstraint(sweep.constraint.metric, sweep.constraint.band)
        search_alg = ConcurrencyLimiter(
            searcher(
                space=compile_space(sweep.space),
                metric=metrics if multi else metrics[0],
                mode=modes if multi else modes[0],
                sampler=sampler,
                points_to_evaluate=sweep.search.points_to_evaluate or None,
                # an SQLite file beside the sweep (its local cache for a sweep on S3)
                **study_storage(local_dir(state.sweep_dir)),
                **extra,
            ),
            sweep.budget.max_concurrent,
        )
    scheduler = None
    if sweep.scheduler.type == "asha":  # steps as time: grace counted in validation rounds
        scheduler = ASHAScheduler(
            time_attr="step",
            metric=metrics[0],
            mode=modes[0],
            max_t=total,
            grace_period=sweep.scheduler.grace_period * val_every,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    from sweeper.sharing import experiment_location

    storage_path, name, fs = experiment_location(state.sweep_dir)  # a folder or S3
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=fs,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=metrics[0], checkpoint_score_order=modes[0]
        ),
        failure_config=tune.FailureConfig(max_failures=sweep.failure.max_failures),
        callbacks=[
            *signing.callbacks(state),  # Ray's restore pickles, signed after each save
            MLflowCallback(state),
            ProgressCallback(metrics[0], modes[0], sweep.planned_trials, total, short_names(state)),
        ],
    )
    tune_config = tune.TuneConfig(
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=sweep.budget.max_concurrent if algo == "grid" else None,
        time_budget_s=sweep.budget.time_budget_s,
    )
    return tune.Tuner(
        _trainable(state), param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def run_sweep(
    sweep_path: str | Path,
    storage: str | Path = "ray_results",
    tracking_uri: Optional[str] = None,
    address: Optional[str] = None,
    overrides: tuple[str, ...] = (),
    tiny: bool = False,
) -> Path:
    from sweeper.closing import closing
    from sweeper.interrupts import Interrupts
    from sweeper.tracking import default_tracking_uri

    with Interrupts() as guard, closing(guard):  # the parent never left RUNNING, one line
        state = prepare(
            Path(sweep_path).resolve(),
            storage,
            tracking_uri or default_tracking_uri(),
            address,
            overrides,
            tiny,
            guard,
        )
        _fit(state, build_tuner(state), guard)
        with guard.raising():  # a signal stops finish at once; resume redoes it
            return finish(state)


def _fit(state: SweepState, tuner, guard) -> None:
    from sweeper.driver import fit_guarded

    guard.check()
    fit_guarded(state, tuner)  # a lost cluster: the parent is marked FAILED
    guard.after_tune()  # Tune returns normally on SIGINT: no winner from a partial sweep


def resume_sweep(sweep_dir: str | Path, address: Optional[str] = None) -> Path:
    """Continue an interrupted sweep: finished trials stay, unfinished ones resume from
    their checkpoints, errored ones are retried, the Optuna study continues. ``sweep_dir``:
    a folder or s3://...; ``address``: the cluster now (default: the one it started on)."""
    from sweeper.buffered import flush
    from sweeper.closing import closing, finished
    from sweeper.driver import connect_ray
    from sweeper.errors import read_state
    from sweeper.interrupts import Interrupts
    from sweeper.lifecycle import ensure_pretrained, reopen
    from sweeper.lock import hold
    from sweeper.report import configure_dashboard, dashboard_lines
    from sweeper.sharing import local_dir
    from sweeper.signing import check_resumable, restored_tuner
    from sweeper.statecheck import check_sweep
    from sweeper.storage import is_remote
    from sweeper.tracking import Tracker

    sweep_dir = str(sweep_dir) if is_remote(sweep_dir) else str(Path(sweep_dir).resolve())
    state = read_state(sweep_dir)
    check_sweep(state, "resume")  # damaged, missing or locked state files: one line each
    if finished(state):  # nothing re-logged, no Ray, no new state files
        print(f"{sweep_dir}: already finished (MLflow parent run {state.parent_run_id}); nothing to resume")
        return state.dir
    hold(sweep_dir)  # one driver per sweep: a second one is refused here, in one line
    check_resumable(state)  # a copy, a moved folder, Ray state nobody signed: one line, nothing started
    if address:
        state = state.model_copy(update={"address": address})
    with Interrupts(sweep_dir) as guard, closing(guard):
        connect_ray(state.address, state.base_config, state.sweep.resources)
        guard.reclaim()  # ray.init took SIGTERM over
        print(f"resuming {sweep_dir}", flush=True)
        reopen(state)  # interrupted, or FAILED by a lost cluster: running again
        flush(local_dir(sweep_dir), state.tracking_uri)
        configure_dashboard(Tracker(state.tracking_uri), state)
        print("\n".join(dashboard_lines(state)), flush=True)
        ensure_pretrained(state, guard)  # stopped while pretraining: redo or continue it
        tuner = restored_tuner(state, _trainable(state), build_tuner)  # only from Ray state we signed
        _fit(state, tuner, guard)
        with guard.raising():
            return finish(state)


def finish(state: SweepState) -> Path:
    """Results table, winner, plots, MLflow parent artifacts; the parent run is closed."""
    from sweeper.best import choose_winner
    from sweeper.buffered import StoreDown, flush_at_end
    from sweeper.confirm import confirm_stage
    from sweeper.export import plot_parallel, plot_pareto, write_parquet
    from sweeper.results import results_table
    from sweeper.sharing import local_dir, local_view, publish, remote_checkpoints
    from sweeper.tracking import Tracker

    try:
        sent, left = flush_at_end(local_dir(state.sweep_dir), state.tracking_uri)  # buffered in an outage
    except StoreDown as exc:
        hint = f"every trial is done; when it is back: srsweep resume {state.sweep_dir}"
        raise StoreDown(f"{exc}; {hint}") from None
    if not sent:
        print(
            f"note: {left} tracking writes still buffered; send them with: srsweep sync {state.sweep_dir}",
            flush=True,
        )
    sweep_dir, state = state.sweep_dir, local_view(state)  # S3: a local mirror, uploaded back at the end
    df = remote_checkpoints(results_table(state), state, sweep_dir)
    tracker, parent = Tracker(state.tracking_uri), state.parent_run_id
    # A driver killed between starting a trial and saving Tune's state loses that trial (Tune
    # re-suggests it under a new id); its partial run is closed and soft-deleted: runs == trials.
    for trial_id, run_id in tracker.children(state.experiment_id, parent):
        if trial_id not in set(df["trial_id"]):
            tracker.discard(run_id, "LOST_ON_RESTORE")
            print(
                f"note: MLflow run {run_id} of trial {trial_id} was lost by the interrupted driver "
                "(Tune re-ran that configuration); it is now deleted",
                flush=True,
            )
    table = write_parquet(df, state.dir / "results.parquet")
    tracker.log_artifact(parent, table)
    ranked, floor, sel = df, None, None
    try:
        sel = choose_winner(state, df)
        ranked, floor = sel.ranked, sel.rule.psnr_floor
        # The ranked table (rank, may_win, constraint_ok) beside the raw one.
        tracker.log_artifact(parent, write_parquet(ranked, state.dir / "ranked.parquet"))
    finally:  # plots and the closed parent run even when no trial qualifies
        for path in (
            plot_pareto(ranked, state.dir / "pareto.png", psnr_floor=floor, total_steps=state.total_steps),
            plot_parallel(ranked, state.dir / "parallel.png"),
        ):
            tracker.log_artifact(parent, path)
        from sweeper import report

        report.parent_outputs(tracker, state, df, sel)
        if sel is not None:
            closing = report.closing_lines(state, sel, report.winner_file(state))
            report.print_lines([report.importance_report(tracker, state), *closing])
            confirm_stage(state, sel)  # retrain the finalists with fresh seeds, score on data.test
        else:
            report.print_lines(report.dashboard_lines(state))
        tracker.end_run(parent, "FINISHED")
        for uri in publish(state, sweep_dir):
            print(f"wrote {uri}", flush=True)
    return state.dir
