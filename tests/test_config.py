"""Configs compose into the typed schema; typos fail at compose time naming the valid choices."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pear_exp.__main__ import CONF_DIR, ConfigKeyError, check_override_keys, config_groups
from pear_exp.config import Config, WeightLevel, register_configs

register_configs()


def composed(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_converts_to_typed_config():
    cfg = OmegaConf.to_object(composed())
    assert isinstance(cfg, Config)
    assert cfg.weighting.level == WeightLevel.block and cfg.weighting.block_size == 4
    assert cfg.model.name == "tiny_student" and cfg.teacher.name == "tiny_teacher"
    assert cfg.model.tiny.pretrain.value == "domain" and cfg.teacher.tiny.pretrain.value == "solutions"


@pytest.mark.parametrize("group", ["model", "weighting", "task", "rollout", "logger"])
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        cfg = OmegaConf.to_object(composed([f"{group}={option}"]))
        assert isinstance(cfg, Config)


@pytest.mark.parametrize("level", ["none", "token", "block", "sequence"])
def test_weighting_levels(level):
    assert OmegaConf.to_object(composed([f"weighting={level}"])).weighting.level.value == level


def test_paper_defaults_for_weights():
    w = OmegaConf.to_object(composed(["weighting=token"])).weighting
    assert (w.gamma, w.delta_clip, w.log_weight_clip) == (0.999, [-0.08, 0.3], [-10.0, 5.0])


def test_misspelt_group_option_lists_the_valid_ones():
    with pytest.raises(Exception, match=r"(?s)Could not find 'weighting/blok'.*block.*sequence"):
        composed(["weighting=blok"])


def test_bad_enum_value_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException) as err:
        composed(["weighting.level=blok"])
    assert ("expected one of [none, token, block, sequence, dft, iw_sft, iw_sft_token, asft]"
            in str(err.value.__cause__))


def test_unknown_keys_are_refused_with_the_valid_keys():
    with pytest.raises(ConfigKeyError, match=r"(?s)'weighting.gama'.*block_size, delta_clip, gamma"):
        check_override_keys(["weighting.gama=1"])
    with pytest.raises(ConfigKeyError, match=r"(?s)'experimnt'.*Config groups: .*experiment"):
        check_override_keys(["+experimnt=x"])
    with pytest.raises(ConfigKeyError, match="sft.stepz"):
        check_override_keys(["sft.stepz=3"])
    # valid keys, group choices, packages and Hydra's own settings pass
    check_override_keys(["weighting=token", "sft.steps=3", "model.tiny.hidden_size=64",
                         "model@teacher=tiny_student", "hydra.run.dir=x", "--multirun", "seed=1"])


def test_cli_refuses_a_typo_before_anything_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pear_exp", "+experimnt=x", f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "unknown config key 'experimnt'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_groups_are_the_documented_ones():
    assert {"model", "weighting", "task", "rollout", "logger", "experiment"} <= set(config_groups())


def test_config_differences_lists_changed_leaves_but_not_operational_keys():
    from pear_exp.__main__ import config_differences

    old = {"seed": 0, "stages": ["sft"], "sft": {"lr": 0.1, "steps": 3}, "logger": {"backend": "none"}}
    new = {"seed": 1, "stages": ["rl"], "sft": {"lr": 0.1, "steps": 4}, "logger": {"backend": "wandb"}}
    assert config_differences(old, new) == ["  seed: 0 -> 1", "  sft.steps: 3 -> 4"]
    assert config_differences(old, old) == []
    # a key the schema dropped (a math task no longer carries Countdown's settings) is no change;
    # a key the schema added is
    dropped = {"task": {"name": "aime2025", "num_numbers": 3}}
    assert config_differences(dropped, {"task": {"name": "aime2025"}}) == []
    assert config_differences({"task": {}}, {"task": {"train_set": None}}) == [
        "  task.train_set: '<absent>' -> None"]


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("level", ["none", "token", "block", "sequence"])
def test_target_temperature_follows_rl_temperature(level):
    # PEAR's target is the model at the RL sampling temperature, whatever the weighting option
    cfg = OmegaConf.to_object(composed([f"weighting={level}", "rl.temperature=0.7"]))
    assert cfg.weighting.target_temperature == 0.7
    cfg = OmegaConf.to_object(composed([f"weighting={level}", "rl.temperature=0.7",
                                        "weighting.target_temperature=0.9"]))
    assert cfg.weighting.target_temperature == 0.9  # an explicit value still wins


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_target_temperature_follows_rl_temperature_in_presets(name):
    cfg = OmegaConf.to_object(composed([f"+experiment={name}", "weighting=token",
                                        "rl.temperature=0.7"]))
    assert cfg.weighting.target_temperature == 0.7


def test_cli_refuses_tis_with_nucleus_rl_sampling(tmp_path):
    # stages=[] keeps the run short should the check be missing (it would then exit 0)
    result = subprocess.run(
        [sys.executable, "-m", "pear_exp", "rl.top_p=0.9", "stages=[]", "logger=none",
         f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(s in lines[0] for s in ("rl.top_p=0.9", "rl.tis_cap=null", "rl.top_p=1.0"))
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_tis_with_nucleus_is_refused_and_either_way_out_composes():
    with pytest.raises(ValueError, match="rl.tis_cap=null or rl.top_p=1.0"):
        OmegaConf.to_object(composed(["rl.top_p=0.9"]))
    assert OmegaConf.to_object(composed(["rl.top_p=0.9", "rl.tis_cap=null"])).rl.top_p == 0.9
    assert OmegaConf.to_object(composed(["rl.tis_cap=2.0", "rl.top_p=1.0"])).rl.tis_cap == 2.0


# ----------------------------------------------------------------------------- one schema per option
def test_each_task_kind_has_its_own_schema():
    from pear_exp.config import CountdownTaskConfig, GameTaskConfig, MathTaskConfig

    assert isinstance(OmegaConf.to_object(composed()).task, CountdownTaskConfig)
    assert isinstance(OmegaConf.to_object(composed(["task=aime2025"])).task, MathTaskConfig)
    assert isinstance(OmegaConf.to_object(composed(["task=game"])).task, GameTaskConfig)
    with pytest.raises(ConfigCompositionException):  # Countdown's key on a math task
        composed(["task=aime2025", "task.num_numbers=5"])
    with pytest.raises(ConfigCompositionException):  # and a math key on the game
        composed(["task=countdown", "task.eval_set=aime2024"])


def refused(tmp_path, *args) -> str:
    """stderr of a command line that must stop with status 2 and create nothing."""
    result = subprocess.run([sys.executable, "-m", "pear_exp", *args, f"run_dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert list(tmp_path.iterdir()) == []
    return result.stderr


def test_cli_names_the_chosen_options_keys_for_a_key_of_another_option(tmp_path):
    stderr = refused(tmp_path, "task=aime2025", "task.num_numbers=5")
    assert "'task.num_numbers' is not a key of the chosen option (MathTaskConfig)" in stderr
    assert "eval_set, grade_timeout" in stderr


def test_a_key_no_task_kind_has_lists_each_kinds_keys():
    with pytest.raises(ConfigKeyError, match=r"(?s)task.num_nmbers.*countdown options only: "
                                             r"max_target.*math options only: eval_set"):
        check_override_keys(["task.num_nmbers=3"])
    check_override_keys(["task.eval_set=aime2024"])  # a key of some kind: composing decides


def test_vllm_settings_on_the_command_line_are_refused_with_the_hf_engine(tmp_path):
    stderr = refused(tmp_path, "rollout=hf", "rollout.gpu_memory_utilization=0.3")
    assert "rollout.gpu_memory_utilization: vLLM settings, unused with rollout=hf" in stderr


def test_weighting_settings_an_option_does_not_read_are_refused(tmp_path):
    stderr = refused(tmp_path, "weighting=dft", "weighting.gamma=0.9")
    assert ("weighting.gamma: unused by weighting=dft, which reads weighting.normalization "
            "(conf/weighting/dft.yaml)") in stderr
    # every option's own file sets only keys the option reads
    for path in (CONF_DIR / "weighting").glob("*.yaml"):
        w = OmegaConf.to_object(composed([f"weighting={path.stem}"])).weighting
        own = {k for k in OmegaConf.load(path) if k != "level"}
        assert own <= set(w.level.settings), path.name


def test_the_kl_base_loss_needs_topk_and_refuses_asft(tmp_path):
    assert "set behavior.top_k" in refused(tmp_path, "sft.base_loss=kl")
    assert "not to sft.base_loss=kl" in refused(tmp_path, "sft.base_loss=kl", "behavior.top_k=5",
                                               "weighting=asft")


def test_gpu_presets_share_a_base_and_switch_engines():
    """The four GPU-node presets state only their differences over conf/base/ and compose with
    rollout=hf too (their vLLM sizing stays for rollout=vllm)."""
    qwen3 = OmegaConf.to_object(composed(["+experiment=aime_qwen3"]))
    assert (qwen3.sft.lr, qwen3.rl.lr, qwen3.evaluate.num_samples) == (1e-5, 1e-6, 64)  # base
    assert qwen3.rollout.tensor_parallel_size == 4 and qwen3.task.eval_set == "aime2025"
    qwen2_5 = OmegaConf.to_object(composed(["+experiment=aime_qwen2_5"]))
    assert qwen2_5.rollout.tensor_parallel_size == 1 and not qwen2_5.rl.gradient_checkpointing
    hf = OmegaConf.to_object(composed(["+experiment=logic_games", "rollout=hf"]))
    assert hf.rollout.engine.value == "hf" and hf.sft.max_seq_len == 9216
    experiments = (CONF_DIR / "experiment").glob("*.yaml")
    assert all(len(p.read_text().splitlines()) <= 40 for p in experiments)


def test_kept_sft_steps_and_the_token_budget_are_checked(tmp_path):
    assert "between 1 and sft.steps - 1 = 599" in refused(tmp_path, "sft.keep_steps=[100,600]")
    assert "a row of that length would not fit" in refused(tmp_path, "sft.micro_batch_tokens=100")


def test_the_rl_task_is_a_task_group_placed_at_a_second_package(tmp_path):
    from pear_exp.config import CountdownTaskConfig, GameTaskConfig

    assert OmegaConf.to_object(composed()).rl_task is None  # RL on the SFT task
    cfg = OmegaConf.to_object(composed(["task@rl_task=game", "rl_task.game=mini_sudoku"]))
    assert isinstance(cfg.rl_task, GameTaskConfig) and cfg.rl_task.game == "mini_sudoku"
    assert isinstance(cfg.task, CountdownTaskConfig) and cfg.rl_task_config is cfg.rl_task
    with pytest.raises(ConfigCompositionException):  # the chosen option's schema holds there too
        composed(["task@rl_task=countdown", "rl_task.eval_set=aime2024"])
    check_override_keys(["rl_task.num_numbers=4"])
    with pytest.raises(ConfigKeyError, match="rl_task.num_nmbers"):
        check_override_keys(["rl_task.num_nmbers=4"])
    shifted = OmegaConf.to_object(composed(["+experiment=tiny_shifted", "+budget=check"]))
    assert (shifted.rl_task.name, shifted.rl_task.num_numbers, shifted.rl_task.num_train) == (
        "countdown4", 4, 16)  # the budget shrinks the RL task with the SFT task
    games = OmegaConf.to_object(composed(["+experiment=logic_games_shifted"]))
    assert (games.task.game, games.rl_task.game) == ("knights_knaves", "zebra_puzzles")
    assert "would overwrite each other" in refused(tmp_path, "task@rl_task=countdown")
