"""The study: MDT4Rec, its ablations and the baselines trained on the same trajectories with the same budget and
evaluated by the same simulator code, one cell (protocol, arm, seed) at a time.

A budget (``conf/studies/<name>.yaml``) fixes the dataset, the protocols and modes, the episodes per evaluation, the
model preset and the baselines' training sizes, and the arms. Every arm of a protocol trains on that protocol's
quit-aware trajectory set; seed s trains with seed s and plays ``episodes`` episodes with evaluation seed s, so the
seeds of every arm meet the same users and initial items. A finished cell is a ``cell.json`` in its folder and is
never run again; a model arm's training resumes from its checkpoint, so a study survives interruption. Model arms
that differ only in their search settings (MDT4Rec and -Max, DT and EDT) share one trained model per seed, kept in
``<protocol>/models/<settings hash>-seed-<s>/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from mdt4rec_core.baselines.log_rule import LogRuleConfig, LogRulePolicy, shrunk_mean_feedback
from mdt4rec_core.config import (
    CONF_DIR,
    ConfigError,
    Mode,
    Protocol,
    RunConfig,
    StrictModel,
    flatten_keys,
    load_config,
    load_run_config,
)
from mdt4rec_core.envs.build import Environment
from mdt4rec_core.envs.evaluation import EpisodeLog, mean_ci95, run_episodes, seed_ci95
from mdt4rec_core.envs.policies import Policy, PopularityPolicy, RandomPolicy

ArmKind = Literal["random", "popularity", "replay", "log-rule", "sasrec", "cql", "bcq", "model"]


@dataclass(frozen=True)
class Arm:
    """One row of the study. ``model``/``search``: changes to the budget's network and search settings (model arms)."""

    kind: ArmKind
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)


_RANDOM_INIT = {"backbone": {"pretrained": False}}
_DT = {"embedding": "linear", "item_factors": False, **_RANDOM_INIT}
ARMS: dict[str, Arm] = {
    "random": Arm("random", "uniform over the allowed items"),
    "popularity": Arm("popularity", "the most logged allowed item"),
    "replay": Arm("replay", "logged replay: a training user's logged items in time order"),
    "log-rule": Arm(
        "log-rule", "no learning: the best-rated logged item at least `log_rule.min_distance` from the items acted on"
    ),
    "sasrec": Arm("sasrec", "SASRec: supervised next item, argmax"),
    "cql": Arm("cql", "d3rlpy DiscreteCQL on EasyRL4Rec's state"),
    "bcq": Arm("bcq", "d3rlpy DiscreteBCQ on EasyRL4Rec's state"),
    "dt": Arm("model", "DT: linear embeddings, random-init backbone, no search", _DT, {"search": False}),
    "edt": Arm("model", "EDT: linear embeddings, random-init backbone, with search", _DT),
    "mdt4rec": Arm("model", "MDT4Rec"),
    "mdt4rec-lm": Arm("model", "-LM: random-init backbone", _RANDOM_INIT),
    "mdt4rec-max": Arm("model", "-Max: no search", {}, {"search": False}),
    "mdt4rec-expert": Arm(
        "model", "conditioned on a draw from the return bins tilted by exp(10 r)", {}, {"conditioning": "expert_sample"}
    ),
    "mdt4rec-sample": Arm(
        "model",
        "recommendations drawn among the 50 best items (Gumbel top-k) instead of the argmax",
        {},
        {"decoding": "sample"},
    ),
    "mdt4rec-quality": Arm(
        "model",
        "the policy's 20 best items ordered by their logged quality (shrunk mean logged reward)",
        {},
        {"decoding": "quality"},
    ),
    "mdt4rec-linear": Arm("model", "linear embeddings", {"embedding": "linear"}),
    "mdt4rec-factors": Arm(
        "model", "without the item vectors from the logs (and so without the distance head)", {"item_factors": False}
    ),
    "mdt4rec-distance": Arm("model", "without the distance-aware action head", {"distance_head": False}),
    "mdt4rec-frozen": Arm("model", "frozen backbone", {"backbone": {"adaptation": "frozen"}}),
    "mdt4rec-full": Arm("model", "full fine-tuning", {"backbone": {"adaptation": "full_finetune"}}),
}


class StudyConfig(StrictModel):
    """conf/studies/<budget>.yaml."""

    dataset: str
    protocols: list[Protocol] = Field(min_length=1)
    modes: list[Mode] = Field(min_length=1)
    episodes: int = Field(ge=1, description="episodes per seed and mode")
    preset: str = Field(description="model preset of the model arms (conf/models/)")
    model: dict[str, Any] = Field(default_factory=dict, description="changes to the preset's network")
    train: dict[str, Any] = Field(default_factory=dict, description="changes to the preset's training")
    search: dict[str, Any] = Field(default_factory=dict, description="search settings of the model arms")
    sasrec: dict[str, Any] = Field(default_factory=dict, description="SASRecConfig of the sasrec arm")
    offline_rl: dict[str, Any] = Field(default_factory=dict, description="OfflineRLConfig of the cql and bcq arms")
    log_rule: LogRuleConfig = Field(default_factory=LogRuleConfig, description="the log-rule arm")
    arms: list[str] = Field(min_length=1)


def load_study_config(budget: str, overrides: list[str] = ()) -> StudyConfig:
    """``conf/studies/<budget>.yaml`` with ``key.path=value`` overrides; unknown arms are an error naming them."""
    path = CONF_DIR / "studies" / f"{budget}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "studies").glob("*.yaml"))
        raise ConfigError(f"unknown study budget {budget!r} (known: {', '.join(known)})")
    config = load_config(StudyConfig, path, list(overrides))
    unknown = [arm for arm in config.arms if arm not in ARMS]
    if unknown:
        raise ConfigError(f"{path}: unknown arm(s) {', '.join(unknown)} (known: {', '.join(ARMS)})")
    return config


def model_arm_run_config(config: StudyConfig, arm: Arm, seed: int, store: str) -> RunConfig:
    """The RunConfig of a model arm: the budget's preset, its ``model``/``train``/``search`` changes, the arm's
    changes over them, and training seed ``seed``."""
    changes = {
        "model": config.model,
        "train": {**config.train, "seed": seed},
        "search": config.search,
    }
    assignments = [
        f"{key}={json.dumps(value)}"
        for layer in (changes, {"model": arm.model, "search": arm.search})
        for key, value in flatten_keys(layer)
    ]
    return load_run_config(preset=config.preset, dataset=config.dataset, store=store, overrides=assignments)


@dataclass(frozen=True)
class CellInputs:
    """What every cell of one protocol shares: its trajectory set (a ``TrajectorySet``), its environment, and the
    store (for item texts)."""

    store_uri: str
    protocol: Protocol
    trajectories: Any
    environment: Environment


def _validation_steps(steps: pl.DataFrame, fraction: float) -> pl.Series:
    """True on the steps of the users the model arms hold out for validation (the same hash as ``train``)."""
    from mdt4rec_core.train import validation_users

    return validation_users(steps["user_id"], fraction)


def _train_policy(inputs: CellInputs, config: StudyConfig, name: str, seed: int, folder: Path) -> tuple[Policy, dict]:
    """The arm's policy, trained in ``folder`` where it learns; and what its training reports (JSON-ready)."""
    arm = ARMS[name]
    trajectories, environment = inputs.trajectories, inputs.environment
    stats = trajectories.stats
    if arm.kind == "random":
        return RandomPolicy(environment.info.items), {"held_out_action_ce": math.log(environment.info.items)}
    if arm.kind == "replay":
        from mdt4rec_core.baselines.replay import LoggedReplayPolicy

        return LoggedReplayPolicy(trajectories.steps), {}
    held_out = _validation_steps(trajectories.steps, 0.05)
    training_steps, validation_steps = trajectories.steps.filter(~held_out), trajectories.steps.filter(held_out)
    if arm.kind == "log-rule":
        quality = shrunk_mean_feedback(training_steps, environment.info.items, config.log_rule.prior_weight)
        return LogRulePolicy(trajectories.item_factors, quality, config.log_rule.min_distance), {}
    if arm.kind == "popularity":
        counts = np.bincount(trajectories.steps["action"].to_numpy(), minlength=environment.info.items)
        trained = np.bincount(training_steps["action"].to_numpy(), minlength=environment.info.items) + 1.0
        ce = float(-np.log(trained / trained.sum())[validation_steps["action"].to_numpy()].mean())
        return PopularityPolicy(counts), {"held_out_action_ce": ce}
    if arm.kind == "sasrec":
        from mdt4rec_core.baselines.sasrec import (
            SASRec,
            SASRecConfig,
            SASRecPolicy,
            held_out_cross_entropy,
            train_sasrec,
        )

        started = time.perf_counter()
        if (folder / "sasrec").is_dir():
            model = SASRec.load(folder / "sasrec")
        else:
            model = train_sasrec(training_steps, stats.items, SASRecConfig(**{**config.sasrec, "seed": seed}))
            model.save(folder / "sasrec")
        report = {"held_out_action_ce": held_out_cross_entropy(model, validation_steps)}
        return SASRecPolicy(model), {**report, "train_seconds": time.perf_counter() - started}
    if arm.kind in ("cql", "bcq"):
        from mdt4rec_core.baselines.offline_rl import (
            OfflineRLConfig,
            QPolicy,
            load_offline_rl,
            save_offline_rl,
            train_offline_rl,
        )

        started = time.perf_counter()
        if (folder / arm.kind).is_dir():
            algo, vectors, _ = load_offline_rl(folder / arm.kind)
        else:
            rl_config = OfflineRLConfig(**{**config.offline_rl, "algorithm": arm.kind, "seed": seed})
            vectors = trajectories.item_factors
            algo = train_offline_rl(training_steps, vectors, rl_config)
            save_offline_rl(folder / arm.kind, algo, rl_config, vectors)
        policy = QPolicy(algo, vectors, stats.feedback_min, stats.feedback_max)
        return policy, {"train_seconds": time.perf_counter() - started}
    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.train import train_on_trajectories

    run = model_arm_run_config(config, arm, seed, inputs.store_uri)
    made_of = run.model.model_dump_json() + run.train.model_dump_json() + stats.version
    model_folder = folder.parent.parent / "models" / f"{hashlib.sha256(made_of.encode()).hexdigest()[:12]}-seed-{seed}"
    model_folder.mkdir(parents=True, exist_ok=True)
    with open(model_folder / ".lock", "w") as lock:  # one process trains a shared model; the others wait, then reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = train_on_trajectories(run, trajectories, model_folder)
    policy = CheckpointPolicy(model_folder / "checkpoint", environment.catalogue, run.search)
    report = {
        "model_folder": str(model_folder),
        "held_out_action_ce": summary["val_action_ce"],
        "popularity_action_ce": summary["popularity_action_ce"],
        "train_seconds": summary["seconds"],
        "trainable_params": summary["trainable_params"],
        "total_params": summary["total_params"],
    }
    return policy, report


def _log_summary(log: EpisodeLog) -> dict[str, Any]:
    return {
        "returns": log.returns.round(4).tolist(),
        "lengths": log.lengths.tolist(),
        "distinct_items": len(np.unique(np.concatenate(log.actions))) if log.actions else 0,
    }


def run_cell(inputs: CellInputs, config: StudyConfig, arm: str, seed: int, folder: Path) -> dict[str, Any]:
    """Train (or resume) arm ``arm`` with ``seed`` and play ``config.episodes`` episodes of every mode with
    evaluation seed ``seed``; the cell's record, also written to ``folder/cell.json`` (read back if present)."""
    done = folder / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    policy, report = _train_policy(inputs, config, arm, seed, folder)
    environment = inputs.environment
    modes = {}
    for mode in config.modes:
        lengths: Counter[int] | None = getattr(policy, "chosen_lengths", None)
        if lengths is not None:
            lengths.clear()
        log = run_episodes(
            environment.rewards, environment.quit_rule, mode, policy, environment.start_users, config.episodes, seed
        )
        modes[mode] = _log_summary(log)
        if lengths is not None:
            modes[mode]["chosen_history_lengths"] = {int(k): v for k, v in sorted(lengths.items())}
    record = {
        "protocol": inputs.protocol,
        "arm": arm,
        "seed": seed,
        "description": ARMS[arm].description,
        "trajectory_version": inputs.trajectories.stats.version,
        "environment_version": environment.info.version,
        **report,
        "modes": modes,
        "seconds": time.perf_counter() - started,
    }
    temporary = folder / ".cell.json.tmp"
    temporary.write_text(json.dumps(record))
    temporary.replace(done)
    return record


def summarise_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protocol, arm, mode): R_cumu and Length with 95 % intervals over every episode of every seed and
    over the per-seed means, R_avg, distinct items (mean over seeds), held-out action cross-entropy (mean over seeds),
    the chosen-history-length histogram (summed) and the per-seed R_cumu means."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        for mode, result in cell["modes"].items():
            groups.setdefault((cell["protocol"], cell["arm"], mode), []).append({**result, "cell": cell})
    rows = []
    for (protocol, arm, mode), results in groups.items():
        returns = np.concatenate([np.asarray(r["returns"]) for r in results])
        lengths = np.concatenate([np.asarray(r["lengths"]) for r in results])
        per_seed = [float(np.mean(r["returns"])) for r in results]
        r_cumu, r_cumu_ci = mean_ci95(returns)
        length, length_ci = mean_ci95(lengths)
        histogram: Counter[int] = Counter()
        for r in results:
            histogram.update({int(k): v for k, v in r.get("chosen_history_lengths", {}).items()})
        ce = [r["cell"].get("held_out_action_ce") for r in results]
        rows.append(
            {
                "protocol": protocol,
                "arm": arm,
                "mode": mode,
                "R_cumu": r_cumu,
                "R_cumu_ci95": r_cumu_ci,
                "R_cumu_seed_ci95": seed_ci95(per_seed),
                "R_cumu_per_seed": per_seed,
                "Length": length,
                "Length_ci95": length_ci,
                "R_avg": r_cumu / length if length else float("nan"),
                "distinct_items": float(np.mean([r["distinct_items"] for r in results])),
                "held_out_action_ce": float(np.mean(ce)) if all(c is not None for c in ce) else None,
                "chosen_history_lengths": dict(sorted(histogram.items())),
                "seeds": len(results),
                "episodes": int(len(returns)),
            }
        )
    order = {name: k for k, name in enumerate(ARMS)}
    return sorted(rows, key=lambda r: (r["protocol"], r["mode"], order[r["arm"]]))
