"""Tasks: training prompts, an evaluation set and a verifier, shared by every stage.

A task is a plain frozen dataclass with `split(n_train, n_eval, seed) -> (train, eval)`,
`score(problem, response) -> 1.0 / 0.0` and `solutions(problem)`; math tasks also `classify`
a response as correct / wrong / no_answer / timeout.
"""

from pathlib import Path

from pear_exp.config import TaskConfig, TaskKind
from pear_exp.tasks.base import Problem, Task
from pear_exp.tasks.countdown import Countdown


def make_task(cfg: TaskConfig) -> Task:
    if cfg.kind == TaskKind.countdown:
        return Countdown(num_numbers=cfg.num_numbers, min_value=cfg.min_value,
                         max_value=cfg.max_value, max_target=cfg.max_target)
    if cfg.kind == TaskKind.math:
        from pear_exp.tasks.math import MathTask

        return MathTask(eval_set=cfg.eval_set, train_set=cfg.train_set, timeout=cfg.grade_timeout)
    from pear_exp.tasks.games import GymGame

    if not cfg.game:
        raise ValueError("task.kind=game needs task.game=<reasoning-gym generator name>")
    cache = Path("~/.cache/pear_exp/games").expanduser()
    return GymGame(name=cfg.game, params=tuple(sorted(cfg.game_params.items())),
                   cache_dir=str(cache))


def split(cfg: TaskConfig) -> tuple[list[Problem], list[Problem]]:
    """The task's (training, evaluation) problems; disjoint, fixed by task.data_seed."""
    return make_task(cfg).split(cfg.num_train, cfg.num_eval, cfg.data_seed)
