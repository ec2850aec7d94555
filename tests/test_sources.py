"""Hub sources a run cannot fetch stop the command with a short message naming each config key,
its hub id and the override to a local copy, before the run writes anything."""

import os
import pickle
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pear_exp import errors, preflight
from pear_exp.__main__ import CONF_DIR
from pear_exp.config import register_configs

register_configs()


def typed(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def test_the_preset_offline_stops_with_the_keys_and_the_overrides(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               HF_HOME=str(tmp_path / "hf"))  # an empty Hugging Face cache
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pear_exp", "+experiment=aime_qwen3",
                             f"run_dir={run_dir}"], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    offline = "not in the local cache, and HF_HUB_OFFLINE=1"
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "error: could not fetch from the Hugging Face hub:",
        f"  model.path=Qwen/Qwen3-4B-Base: {offline}",
        f"  teacher.path=Qwen/Qwen3-32B: {offline}",
        f"  task.train_set=agentica-org/DeepScaleR-Preview-Dataset@train: {offline}",
        "Point them at local copies (checkpoint directories with config.json, tokenizer, "
        "weights; JSONL files with problem and answer fields) by adding:",
        "  model.path=/path/to/Qwen3-4B-Base teacher.path=/path/to/Qwen3-32B "
        "task.train_set=/path/to/train.jsonl",
    ]
    assert not run_dir.exists()  # no config.yaml, no W&B run: only Hydra's own job directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


def test_only_the_sources_the_stages_load_are_needed(tmp_path):
    cfg = typed(["+experiment=aime_qwen3"])
    run_dir = tmp_path / "run"
    assert preflight.needed_hub_sources(cfg, run_dir) == [
        ("model.path", "Qwen/Qwen3-4B-Base", "model"),
        ("teacher.path", "Qwen/Qwen3-32B", "model"),
        ("task.train_set", "agentica-org/DeepScaleR-Preview-Dataset@train", "dataset"),
    ]  # task.eval_set=aime2025 is shipped
    train = tmp_path / "train.jsonl"
    train.write_text('{"problem": "1+1", "answer": "2"}\n')
    local = typed(["+experiment=aime_qwen3", f"model.path={tmp_path}", f"task.train_set={train}",
                   "stages=[sft,rl,evaluate]", "task.eval_set=HuggingFaceH4/MATH-500@test"])
    assert preflight.needed_hub_sources(local, run_dir) == [
        ("task.eval_set", "HuggingFaceH4/MATH-500@test", "dataset")]  # no behavior: no teacher
    (run_dir / "behavior").mkdir(parents=True)
    (run_dir / "behavior" / "DONE").write_text("")  # sampled earlier: the teacher is not loaded
    assert [k for k, _, _ in preflight.needed_hub_sources(cfg, run_dir)] == ["model.path",
                                                                         "task.train_set"]
    scored = typed(["+experiment=aime_qwen3", "behavior.source=dataset", "behavior.top_p=1.0",
                    "behavior.dataset=someone/traces"])
    assert ("behavior.dataset", "someone/traces", "dataset") in preflight.needed_hub_sources(
        scored, tmp_path / "other")


def test_after_the_hub_fails_to_answer_the_rest_are_not_tried(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    calls = []

    def no_network(repo, filename, **kwargs):
        calls.append(repo)
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # "online"
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(preflight, "_cached", lambda source, kind: False)
    missing = preflight.unavailable_sources(typed(["+experiment=aime_qwen3"]), tmp_path / "run")
    assert calls == ["Qwen/Qwen3-4B-Base"]  # each further try would cost ~25 s of retries
    assert [(m.key, m.reason) for m in missing] == [
        (key, "not in the local cache, and the hub cannot be reached")
        for key in ("model.path", "teacher.path", "task.train_set")]


def test_a_load_deep_in_a_stage_names_the_key(tmp_path):
    from pear_exp.models import load_model, load_tokenizer

    with pytest.raises(errors.SourceUnavailable) as err:
        load_tokenizer("nobody/not-cached")  # tests run with HF_HUB_OFFLINE=1 (conftest)
    with pytest.raises(errors.SourceUnavailable):
        load_model("nobody/not-cached")
    cfg = typed(["model@teacher=qwen3_32b", "teacher.path=nobody/not-cached"])
    named = pickle.loads(pickle.dumps(err.value.naming_keys(cfg)))  # as a sweep job returns it
    lines = str(named).splitlines()
    assert lines[1].startswith("  teacher.path=nobody/not-cached: ")
    assert lines[-1] == "  teacher.path=/path/to/not-cached"
    # a local directory that fails to load is not a fetch problem: its own error stays
    from transformers import Qwen3Config

    Qwen3Config(num_hidden_layers=1).save_pretrained(tmp_path)  # a config, no weights
    with pytest.raises(OSError) as err:
        load_model(str(tmp_path))
    assert not isinstance(err.value, errors.SourceUnavailable)
