"""`ferlab report --study STORAGE NAME`: every trial of an Optuna study, whichever worker ran it, in one table.

Columns: trial number, state (complete, pruned, failed, failed and retried as another trial, running,
waiting), the objective value, the parameters, the headline metrics the sweeper stored with each trial (its
run's metrics.json), and the run dir. Complete trials come first, best objective first, then pruned ones
(by their last reported value), then the rest by number. Below the table, Optuna's parameter importances
(fANOVA) over the complete trials.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ferlab.errors import FerlabError
from ferlab.search.trial import RUN_ATTR


def _state(trial: Any, retries: dict[int, int]) -> str:
    name = {"fail": "failed"}.get(trial.state.name.lower(), trial.state.name.lower())
    if trial.number in retries:
        name += f", retried as #{retries[trial.number]}"
    origin = trial.system_attrs.get("failed_trial")
    if origin is not None:
        name += f" (retry of #{origin})"
    return name


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value(s), params, metrics, run dir, host, error; in table order."""
    trials = study.get_trials(deepcopy=False)
    retries = {}  # failed trial number -> the trial that re-ran it
    for t in trials:
        history = t.system_attrs.get("retry_history", [])
        if history:
            retries[history[-1]] = t.number
    sign = [-1.0 if d.name == "MAXIMIZE" else 1.0 for d in study.directions]
    rank = {"COMPLETE": 0, "PRUNED": 1}

    def order(t: Any) -> tuple:
        value = t.values[0] * sign[0] if t.values and t.state.name in rank else math.inf
        return rank.get(t.state.name, 2), value if not math.isnan(value) else math.inf, t.number

    rows = []
    for t in sorted(trials, key=order):
        run = t.user_attrs.get(RUN_ATTR) or {}
        rows.append({"trial": t.number, "state": _state(t, retries), "values": t.values, "params": t.params,
                     "metrics": run.get("metrics") or {}, "run": run.get("dir"), "host": run.get("host"),
                     "error": run.get("error")})
    return rows


def importances(study: Any) -> list[tuple[str, dict[str, float]]]:
    """[(objective label, {param: importance})] from Optuna's fANOVA over the complete trials (empty if < 2)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    out = []
    for i, direction in enumerate(study.directions):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        try:
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                             target=lambda t, i=i: t.values[i])
        except (ValueError, RuntimeError):  # no parameter common to the complete trials, or all values equal
            continue
        out.append((f"objective {i} ({direction.name.lower()})" if len(study.directions) > 1 else "objective", scores))
    return out


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return "-" if value is None else str(value)


def _columns(rows: list[dict], metrics: list[str] | None) -> tuple[list[str], list[str]]:
    params = sorted({k for r in rows for k in r["params"]})
    names = metrics or sorted({k for r in rows for k in r["metrics"] if "/" in k})
    return params, names


def to_markdown(study: Any, url: str, rows: list[dict], metrics: list[str] | None) -> str:
    """The table, then the parameter importances."""
    params, names = _columns(rows, metrics)
    from ferlab.search.study import state_counts

    states = state_counts(study.get_trials(deepcopy=False))
    directions = " and ".join(d.name.lower() for d in study.directions)
    out = [f"## Optuna study {study.study_name}: {', '.join(f'{n} {s}' for s, n in states.items()) or 'no trial'}",
           "", f"Storage: `{url}`; objective: {directions} (`value`); sorted best first.", ""]
    cols = ["trial", "state", "value", *params, *names, "run"]
    out += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        value = ", ".join(_num(v) for v in r["values"]) if r["values"] else "-"
        cells = [str(r["trial"]), r["state"], value, *(_num(r["params"].get(p)) for p in params),
                 *(_num(r["metrics"].get(m)) for m in names), f"`{r['run']}`" if r["run"] else (r["error"] or "-")]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    scores = importances(study)
    out += ["", "### Parameter importances (fANOVA, complete trials)", ""]
    if not scores:
        out.append("Not computed: fewer than two complete trials, or no parameter or value varies between them.")
    for label, values in scores:
        out.append(f"{label}: " + ", ".join(f"`{k}` {v:.3f}" for k, v in values.items()))
    return "\n".join(out) + "\n"


def to_csv(rows: list[dict], metrics: list[str] | None) -> str:
    params, names = _columns(rows, metrics)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "state", "value", *params, *names, "run", "host", "error"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], ";".join(repr(v) for v in r["values"] or []),
                         *(r["params"].get(p, "") for p in params), *(r["metrics"].get(m, "") for m in names),
                         r["run"] or "", r["host"] or "", r["error"] or ""])
    return buf.getvalue()


def run_study_report(args: argparse.Namespace) -> tuple[str, list[Path]]:
    """Load the study named by `args.study`, render it in `args.format`; write it under `args.out` if given."""
    from ferlab.search.study import load_study, safe_url

    url, name = args.study
    study = load_study(url, name)
    rows = trial_rows(study)
    if not rows:
        raise FerlabError(f"study {name!r} in {safe_url(url)} has no trial yet")
    if args.format == "json":
        text = json.dumps({"study": name, "storage": safe_url(url), "trials": rows,
                           "importances": dict(importances(study))}, indent=2, default=str) + "\n"
    elif args.format == "csv":
        text = to_csv(rows, args.metrics)
    else:
        text = to_markdown(study, safe_url(url), rows, args.metrics)
    written = []
    if args.out is not None and not args.no_write:
        from ferlab.runs.io import atomic_write_text

        suffix = {"markdown": "md"}.get(args.format, args.format)
        written.append(atomic_write_text(args.out / f"study_{name}.{suffix}", text))
    return text, written
