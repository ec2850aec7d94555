"""Entry point: `python -m pear_exp [overrides]`.

Validates the command line, composes the Hydra config (typed by pear_exp.config), converts it once
into a `Config` and runs the pipeline in the job's output directory (never chdir).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pear_exp import errors, preflight
import pear_exp.config as config_module
from pear_exp.config import (
    OPERATIONAL_KEYS,
    TASK_SCHEMAS,
    VLLM_ONLY,
    Config,
    ConfigValueError,
    Engine,
    TaskConfig,
    register_configs,
)
from pear_exp.pipeline import run
from pear_exp.plan import print_plan
from pear_exp.train import distributed

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigKeyError(SystemExit):
    pass


def config_groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def check_override_keys(args: list[str]) -> None:
    """Reject keys the schema does not have, naming the valid ones, before Hydra starts.

    Hydra already lists the valid options of a misspelt group value (weighting=blok); this covers
    keys: `weighting.gama=1` or `+experimnt=x` would otherwise fail without the valid names, or
    (with +) be appended silently.
    """
    groups = config_groups()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or "@" in key:
            continue  # Hydra's own settings; a group placed at a package (model@teacher)
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in groups:
            continue  # a group choice: Hydra checks the option and lists the valid ones
        schema: type | None = Config
        for depth, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(schema)}
            options = OPTION_SCHEMAS.get(schema, {})
            if part not in fields and any(part in {f.name for f in dataclasses.fields(o)}
                                          for o in options.values()):
                break  # a key of one option (task.eval_set): composing checks it is the chosen one
            if part not in fields:
                where = ".".join(parts[:depth]) or "the top level"
                message = (f"error: unknown config key '{key}' in override '{arg}'.\n"
                           f"Valid keys at {where}: {', '.join(sorted(fields))}")
                for option, option_schema in options.items():
                    own = sorted({f.name for f in dataclasses.fields(option_schema)} - set(fields))
                    message += f"\n  and in {option.value} options only: {', '.join(own)}"
                if depth == 0:
                    message += f"\nConfig groups: {', '.join(groups)} (presets: +experiment=NAME)"
                raise ConfigKeyError(message)
            schema = _dataclass_of(fields[part].type)
            if schema is None:
                break  # a leaf, list or dict: Hydra validates the value's type


def check_values(args: list[str]) -> None:
    """Compose the config main() will get and convert it once, so that a combination the schema
    refuses (ConfigValueError, e.g. TIS with rl.top_p < 1) stops the command before Hydra creates
    its output directory. Skipped when a Hydra flag is given (a sweep is not one config; --cfg,
    --help, another config): main() and every sweep job still convert and refuse the same way."""
    if any(arg.startswith("-") for arg in args):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            dict_cfg = compose(config_name="config", overrides=args)
        cfg = OmegaConf.to_object(dict_cfg)
    except ConfigValueError:
        raise
    except Exception as err:
        foreign = re.search(r"Key '(\w+)' not in '(\w+)'\s+full_key: ([\w.]+)", str(err.__cause__))
        schema = getattr(config_module, foreign.group(2), None) if foreign else None
        if schema in {s for options in OPTION_SCHEMAS.values() for s in options.values()}:
            keys = ", ".join(sorted(f.name for f in dataclasses.fields(schema)))
            raise ConfigKeyError(f"error: '{foreign.group(3)}' is not a key of the chosen option "
                                 f"({schema.__name__}).\nValid keys: {keys}") from None
        return  # anything else (a misspelt option, a bad value type): Hydra reports it in main()
    given = [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a]
    vllm_keys = [k for k in given if k.startswith("rollout.") and k[8:] in VLLM_ONLY]
    if cfg.rollout.engine == Engine.hf and vllm_keys:
        raise ConfigKeyError(f"error: {', '.join(vllm_keys)}: vLLM settings, unused with "
                             f"rollout=hf (choose rollout=vllm, or leave them out)")
    level = cfg.weighting.level
    unused = [k for k in given if k.startswith("weighting.") and k[10:] != "level"
              and k[10:] not in level.settings]
    if unused:
        raise ConfigKeyError(
            f"error: {', '.join(unused)}: unused by weighting={level.value}, which reads "
            + (", ".join(f"weighting.{k}" for k in level.settings) or "no setting")
            + " (conf/weighting/" + level.value + ".yaml)")


# The groups whose options each have their own schema (a subclass of the field's type).
OPTION_SCHEMAS = {TaskConfig: TASK_SCHEMAS}


def _dataclass_of(annotation) -> type | None:
    name = str(annotation).replace("Optional[", "").rstrip("]")
    candidate = getattr(config_module, name, None)
    return candidate if dataclasses.is_dataclass(candidate) else None


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(dict_cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    cfg: Config = OmegaConf.to_object(dict_cfg)
    if cfg.plan:  # print what would run and what it needs; load, download, write nothing
        print_plan(cfg, hydra_cfg.runtime.choices)
        return {}
    world = distributed.init(cfg.distributed)
    # Hydra names the output directory after the clock on each rank: use rank 0's everywhere.
    run_dir = Path(world.broadcast(cfg.run_dir or hydra_cfg.runtime.output_dir))
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items()
               if not k.startswith("hydra") and v is not None and k != "base_config"}
    resolved = OmegaConf.to_container(dict_cfg, resolve=True)
    resolved["choices"] = choices
    recorded = run_dir / "config.yaml"
    new_text = OmegaConf.to_yaml(dict_cfg, resolve=True)
    if world.is_main and recorded.exists():
        differences = config_differences(OmegaConf.load(recorded), OmegaConf.create(new_text))
        if differences:
            raise SystemExit(
                f"error: {run_dir} was started with another configuration; refusing to mix runs.\n"
                + "\n".join(differences)
                + "\nUse a new run_dir, or the recorded values to continue this run.")
    # hub ids that can be neither found in the cache nor fetched: one message, nothing written
    missing = world.broadcast(preflight.unavailable_sources(cfg, run_dir) if world.is_main else None)
    if missing:
        distributed.shutdown()
        stop(errors.SourceUnavailable(missing))
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(new_text)
    world.barrier()
    group = cfg.logger.group or wandb_group(cfg.experiment, run_dir, hydra_cfg.mode)
    try:
        return run(cfg, run_dir, resolved, choices, world, group=group)
    except errors.SourceUnavailable as err:  # a load deep in a stage: name the config key
        stop(err.naming_keys(cfg))
    except errors.RunStopped as err:
        stop(err)
    finally:
        distributed.shutdown()


def wandb_group(experiment: str | None, run_dir: Path, mode: RunMode) -> str | None:
    """One W&B group per sweep: "<experiment> <sweep directory>" (a job's directory sits one
    level below its sweep's, on every launcher); a single run: the experiment's name."""
    if mode != RunMode.MULTIRUN:
        return experiment
    return f"{experiment or 'sweep'} {run_dir.parent}"[-128:]  # W&B's limit on a group name


def stop(err: errors.RunStopped):
    """End with the message alone and exit status 1. In a sweep the job fails as any failing
    job does (Hydra reports it and runs the others)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise err
    raise SystemExit(f"error: {err}") from None


def config_differences(old, new, prefix: str = "") -> list[str]:
    """'key: recorded -> new' for every leaf of the new config that differs, outside
    OPERATIONAL_KEYS."""
    old_c = OmegaConf.to_container(old) if not isinstance(old, (dict, list)) else old
    new_c = OmegaConf.to_container(new) if not isinstance(new, (dict, list)) else new
    out = []
    # A key only the recorded config has is one the schema no longer holds (e.g. Countdown's
    # settings that a math task's config once carried): nothing reads it, so it cannot differ.
    for key in sorted(new_c):
        if not prefix and key in OPERATIONAL_KEYS:
            continue
        a, b = old_c.get(key, "<absent>"), new_c[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"  {prefix}{key}: {a!r} -> {b!r}")
    return out


# plan=true writes nothing: Hydra's output directory, saved configs and log file are turned off
# (the job "runs" in the current directory, which exists already).
PLAN_HYDRA_OVERRIDES = {"hydra.run.dir": ".", "hydra.output_subdir": "null",
                        "hydra/job_logging": "stdout"}


def plan_overrides(args: list[str]) -> list[str]:
    """The Hydra overrides plan=true needs, less those the command line sets itself."""
    if not any(re.fullmatch(r"\+{0,2}plan=(true|yes|on|1)", a, re.IGNORECASE) for a in args):
        return []
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    return [f"{k}={v}" for k, v in PLAN_HYDRA_OVERRIDES.items() if k not in given]


def cli() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        check_override_keys(sys.argv[1:])
        check_values(sys.argv[1:])
    except ConfigKeyError as err:
        print(err.code, file=sys.stderr)
        sys.exit(2)
    except ConfigValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv += plan_overrides(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
