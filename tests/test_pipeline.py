"""End to end through the command line: every stage runs, writes its artifacts, and re-running
skips what finished."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk


def run_cli(args, cache, cwd):
    env = {**os.environ, "PEAR_EXP_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pear_exp", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=900)


def test_smoke_pipeline_end_to_end_and_rerun_skips(tmp_path):
    run_dir = tmp_path / "run"
    args = ["+experiment=smoke", "logger=none", f"run_dir={run_dir}", "weighting=token",
            "sft.keep_steps=[2]"]
    first = run_cli(args, tmp_path / "cache", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = load_from_disk(str(run_dir / "behavior" / "data"))
    meta = json.loads((run_dir / "behavior" / "meta.json").read_text())
    assert len(data) == meta["kept"] == meta["samples"] == 64 * 2  # keep_only_correct=false
    assert (run_dir / "sft" / "model" / "model.safetensors").exists()
    # the teacher's samples on the 16 evaluation problems, apart from the training data
    held = json.loads((run_dir / "behavior" / "heldout" / "meta.json").read_text())
    assert held["samples"] == held["kept"] == 16 * 2
    assert len(load_from_disk(str(run_dir / "behavior" / "heldout" / "data"))) == 32
    summary = json.loads((run_dir / "summary.json").read_text())
    # their NLL per checkpoint: SFT on the teacher's data lowers it
    assert 0 < summary["sft"]["teacher_nll"] < summary["base"]["teacher_nll"]
    # sft.keep_steps=[2]: the model after SFT step 2, the same RL from it, both evaluated
    assert set(summary) == {"base", "sft", "rl", "sft@2", "rl@2"}
    assert (run_dir / "rl" / "model" / "model.safetensors").exists()
    assert (run_dir / "sft" / "step-2" / "model" / "model.safetensors").exists()
    assert (run_dir / "rl" / "from-step-2" / "DONE").exists()
    assert summary["sft@2"] != summary["sft"]  # 2 of 6 SFT steps: another model
    for label in ("base", "sft", "rl", "sft@2", "rl@2"):
        assert 0.0 <= summary[label]["pass@1"] <= summary[label]["pass@2"] <= 1.0
        assert len((run_dir / "evaluate" / label / "problems.jsonl").read_text().splitlines()) == 16
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft_records = [r for r in records if r["stage"] == "sft"]
    assert [r["step"] for r in sft_records] == [2, 4, 6]
    assert all("sft/weight_ess" in r and "sft/loss" in r for r in sft_records)
    rl_records = [r for r in records if r["stage"] == "rl"]
    assert [r["step"] for r in rl_records] == [1, 2, 3]
    assert [r["step"] for r in records if r["stage"] == "rl@2"] == [1, 2, 3]  # the same RL
    assert rl_records[0]["rl/sync_logprob_diff_max"] < 1e-3  # the hf engine: probed once
    assert [r["step"] for r in records if r["stage"] == "rl_eval"] == [3]
    # every checkpoint's evaluation also on a checkpoint axis (0 base, 1 sft, 2 rl)
    evals = {r["step"]: r for r in records if r["stage"] == "eval"}
    assert sorted(evals) == [0, 1, 2]
    for step, label in enumerate(("base", "sft", "rl")):
        assert evals[step]["eval/countdown/pass@1"] == summary[label]["pass@1"]
    kept = {r["step"]: r for r in records if r["stage"] == "eval@2"}
    assert kept[2]["eval@2/countdown/pass@1"] == summary["rl@2"]["pass@1"]
    # the report counts the kept model as a point of its own at sft.steps = 2
    from pear_exp.report import load_jobs
    jobs, _ = load_jobs(run_dir)
    assert [(j["point"], j["summary"]["rl"]) for j in jobs] == [
        ((("sft.steps", "6"),), summary["rl"]), ((("sft.steps", "2"),), summary["rl@2"])]
    assert "held-out accuracy" in first.stdout
    # the tiny models were built into the cache, once
    assert len(list((tmp_path / "cache" / "tiny").iterdir())) == 2

    stamp = (run_dir / "sft" / "DONE").read_text()
    second = run_cli(args, tmp_path / "cache", tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run_dir / "sft" / "DONE").read_text() == stamp
    assert "building tiny model" not in second.stdout
    assert json.loads((run_dir / "summary.json").read_text()) == summary

    # another weighting in another run directory reuses the behavior data instead of sampling
    other = run_cli(["+experiment=smoke", "logger=none", f"run_dir={tmp_path / 'other'}",
                     "weighting=none", "stages=[behavior]"], tmp_path / "cache", tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "reusing the data sampled earlier" in other.stdout
    reused = load_from_disk(str(tmp_path / "other" / "behavior" / "data"))
    assert reused.to_dict() == data.to_dict()
    assert len(list((tmp_path / "cache" / "behavior").iterdir())) == 1  # no temporary left

    # the KL base loss: the behavior data gains the teacher's top-k, SFT logs the KL it trains
    kl_dir = tmp_path / "kl"
    distill = run_cli(["+experiment=smoke", "logger=none", f"run_dir={kl_dir}", "weighting=block",
                       "sft.base_loss=kl", "behavior.top_k=4", "stages=[behavior,sft]"],
                      tmp_path / "cache", tmp_path)
    assert distill.returncode == 0, distill.stderr[-3000:]
    top = load_from_disk(str(kl_dir / "behavior" / "data"))
    assert top["input_ids"] == data["input_ids"]  # the same samples: top-k only adds columns
    assert all(len(ids) == sum(mask) and {len(t) for t in ids} == {4}
               for ids, mask in zip(top["behavior_topk_ids"], top["loss_mask"]))
    kl_records = [json.loads(line) for line in (kl_dir / "metrics.jsonl").read_text().splitlines()]
    kl_steps = [r for r in kl_records if r["stage"] == "sft"]
    assert len(kl_steps) == 3 and all(r["sft/kl"] > 0 for r in kl_steps)

    # the same run directory with a result-changing override is refused, naming the difference
    third = run_cli(args + ["sft.lr=0.5"], tmp_path / "cache", tmp_path)
    assert third.returncode != 0
    assert "sft.lr: 0.002 -> 0.5" in third.stderr and (run_dir / "sft" / "DONE").read_text() == stamp


@pytest.mark.slow
def test_default_run_learns_the_game(tmp_path):
    """The embedded default (no overrides besides where to write): SFT beats the base clearly."""
    run_dir = tmp_path / "run"
    result = run_cli([f"run_dir={run_dir}", "logger=none"], tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    base, sft = summary["base"], summary["sft"]
    assert sft["pass@1"] - sft["pass@1_ci95"] > base["pass@1"] + base["pass@1_ci95"]
    assert sft["greedy"] > 0.15


def test_evaluate_any_checkpoint_on_a_math_set(tmp_path, tokenizer):
    """stages=[evaluate] with model.path: no other stage runs, every AIME 2024 problem is scored."""
    from tests.conftest import make_tiny_model

    checkpoint = tmp_path / "ckpt"
    make_tiny_model(tokenizer).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    run_dir = tmp_path / "run"
    result = run_cli(["stages=[evaluate]", "task=aime2024", f"model.path={checkpoint}",
                      "evaluate.num_samples=2", "evaluate.max_new_tokens=8", "logger=none",
                      f"run_dir={run_dir}"], tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [  # metrics.jsonl: the eval record
        "config.yaml", "evaluate", "metrics.jsonl", "summary.json"]
    rows = (run_dir / "evaluate" / "base" / "problems.jsonl").read_text().splitlines()
    assert len(rows) == 30 and all(json.loads(r)["n"] == 2 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())["base"]
    assert summary["pass@1"] == 0.0 and summary["no_answer_frac"] == 1.0  # 8 random tokens


def test_shifted_task_rl_trains_and_checks_on_the_rl_task_and_evaluates_both(tmp_path):
    """task@rl_task: SFT on 3-number Countdown, GRPO on 4-number Countdown. A one-job sweep with
    an offline W&B run, so the RL samples the run logged can be read back: their prompts are
    the RL task's; evaluation covers both tasks for every checkpoint; the sweep is the group."""
    from tests.wandb_log import history, records

    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PEAR_EXP_CACHE"] = str(tmp_path / "cache")
    args = ["--multirun", "+experiment=smoke", "logger=wandb", "logger.mode=offline",
            f"hydra.sweep.dir={sweep}", "stages=[behavior,sft,rl,evaluate]",
            "task@rl_task=countdown", "rl_task.name=countdown4", "rl_task.num_numbers=4",
            "rl_task.max_value=12", "rl_task.num_train=64", "rl_task.num_eval=8",
            "rl.max_new_tokens=64"]
    done = subprocess.run([sys.executable, "-m", "pear_exp", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p.parent for p in sweep.glob("*/config.yaml")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"base", "sft", "rl"}

    def numbers(problem_id):  # countdown-<sorted numbers>-<target>
        return len(problem_id.split("-")) - 2

    for label in summary:
        assert 0.0 <= summary[label]["countdown4/pass@1"] <= summary[label]["countdown4/pass@2"]
        sft_task = (run_dir / "evaluate" / label / "problems.jsonl").read_text().splitlines()
        rl_task = (run_dir / "evaluate" / "rl_task" / label / "problems.jsonl").read_text()
        assert {numbers(json.loads(r)["problem_id"]) for r in sft_task} == {3}
        assert len(sft_task) == 16
        assert [numbers(json.loads(r)["problem_id"]) for r in rl_task.splitlines()] == [4] * 8
    assert "countdown4: held-out accuracy" in done.stdout

    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    (run,) = [r for r in records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run.run.run_group == f"smoke {sweep}"  # one group per sweep
    table_dir = run_file.parent / "files" / "media" / "table"
    (samples,) = (table_dir / "rl").glob("samples_step_3_*.table.json")
    content = json.loads(samples.read_text())
    prompts = [row[content["columns"].index("prompt")] for row in content["data"]]
    assert prompts and all(len(p.split(" from ")[1].split()) == 4 for p in prompts)
    logged = history(run_file)  # both tasks' metrics on the checkpoint axis, one row each
    for task in ("countdown", "countdown4"):
        rows = [row for row in logged if f"eval/{task}/pass@1" in row]
        assert [json.loads(row["eval/step"]) for row in rows] == [0, 1, 2]

    from pear_exp.report import report
    markdown = report(sweep, tmp_path / "report")
    assert "RL ran on a shifted task, countdown4" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| jobs |"))
    assert "| sft pass@1 |" in header and "| rl countdown4/pass@1 |" in header
