"""Tasks: training prompts, an evaluation set and a verifier, shared by every stage.

A task is a plain frozen dataclass with `split(n_train, n_eval, seed) -> (train, eval)`,
`solutions(problem)` and batched grading, `classify_many(problems, responses)` (correct / wrong /
no_answer / timeout) and `score_many(problems, responses)` (1.0 / 0.0); see tasks/base.py.
"""

from pathlib import Path

from pear_exp.config import TaskConfig, TaskKind
from pear_exp.tasks.base import Problem, Task
from pear_exp.tasks.countdown import Countdown
from pear_exp.tasks.math import MathTask


def make_task(cfg: TaskConfig, cache_dir: str | Path) -> Task:
    """The configured task; ``cache_dir`` is the run's cache directory (games keep generated
    problems under ``<cache_dir>/games``)."""
    if cfg.kind == TaskKind.countdown:
        return Countdown.from_config(cfg)
    if cfg.kind == TaskKind.math:
        return MathTask.from_config(cfg)
    from pear_exp.tasks.games import GymGame  # imports reasoning-gym, slow: only when a game is run

    return GymGame.from_config(cfg, cache_dir)


def split(cfg: TaskConfig, cache_dir: str | Path) -> tuple[list[Problem], list[Problem]]:
    """The task's (training, evaluation) problems; disjoint, fixed by task.data_seed."""
    return make_task(cfg, cache_dir).split(cfg.num_train, cfg.num_eval, cfg.data_seed)
