"""Parameter importances compare trials at equal training: ASHA-stopped trials are left out."""

import optuna

from sweeper.study import format_importances, importances, storage_url, study_name


def _study(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=study_name(tmp_path), storage=storage_url(tmp_path))
    for x, y, steps, value in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x, "y": y},
                value=value,
                user_attrs={"steps": steps},
                distributions={
                    "x": optuna.distributions.FloatDistribution(0, 1),
                    "y": optuna.distributions.FloatDistribution(0, 1),
                },
            )
        )


def test_importances_count_only_full_budget_trials(tmp_path):
    # Finished trials: the value depends on x only; stopped trials (step 15) would say y.
    ys = [0.5, 0.2, 0.8, 0.4, 0.9, 0.1, 0.7, 0.3]
    full = [(i / 8 + 0.05, y, 60, i / 8 + 0.05) for i, y in enumerate(ys)]
    stopped = [(0.2, 0.9, 15, 9.0), (0.6, 0.1, 15, 0.0)]
    _study(tmp_path, full + stopped)
    values, note, spread = importances(tmp_path, total_steps=60)
    assert "over 8 trials that ran the full budget" in note and "minimum 8" in note
    assert values["x"] > 0.8 > values["y"]
    assert set(spread) == {"x", "y"} and all(0 <= v < 0.5 for v in spread.values())
    text = format_importances(values, note, {}, spread)
    assert f"{values['x']:.2f} +- {spread['x']:.2f}" in text
    values_all, note_all, _ = importances(tmp_path)
    assert "over 10 completed trials" in note_all


def test_too_few_full_budget_trials_is_a_note(tmp_path):
    _study(tmp_path, [(0.1, 0.5, 60, 0.1), (0.2, 0.9, 15, 9.0), (0.6, 0.1, 15, 0.0), (0.3, 0.3, 30, 1.0)])
    values, note, _ = importances(tmp_path, total_steps=60)
    assert values is None and "needs >= 8 trials that ran the full budget" in note and "has 1" in note
    # a stated, configurable minimum: 3 finished trials are not enough by default, are when asked
    _study(tmp_path / "b", [(i / 3, (i * 7 % 3) / 3, 60, i / 3) for i in range(3)])
    assert importances(tmp_path / "b", total_steps=60)[0] is None
    assert importances(tmp_path / "b", total_steps=60, min_trials=3)[0] is not None
