"""experiments/benchmarks/bench.py still runs (tiny sizes, nothing timed), and TRL stays out of
the package: it is the benchmark's optional extra, never a dependency of pear_exp."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "experiments/benchmarks/bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pear_exp_never_imports_trl():
    pattern = re.compile(r"^\s*(import trl|from trl\b)", re.MULTILINE)
    offenders = [str(p) for p in (ROOT / "pear_exp").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_benchmark_measures_our_sft_and_trl_on_the_same_batches(tokenizer, tmp_path):
    bench = load_bench()
    s = bench.QUICK
    model = bench.build_model(s, tokenizer)
    _, _, jsonl = bench.countdown_data(s, tmp_path)
    rows = bench.behavior_rows(model, tokenizer, jsonl)
    assert bench.weights_seconds(rows, s, "block", tokenizer.pad_token_id, calls=2) > 0
    steps = s.rows // s.batch
    intervals, wall = bench.ours_sft(copy.deepcopy(model), rows, s, "block", tokenizer.pad_token_id)
    assert len(intervals) == steps - 1 and all(t > 0 for t in intervals) and wall > 0
    intervals, _ = bench.ours_sft(copy.deepcopy(model), rows, s, "none", tokenizer.pad_token_id,
                                  padding_free=False)
    assert len(intervals) == steps - 1
    pytest.importorskip("trl")
    intervals, trl_steps = bench.trl_sft(copy.deepcopy(model), rows, s, tokenizer, tmp_path)
    assert len(intervals) == steps - 1 and trl_steps == steps
    intervals, packed_steps = bench.trl_sft(copy.deepcopy(model), rows, s, tokenizer, tmp_path,
                                            packing=True)
    assert len(intervals) == packed_steps - 1 and packed_steps >= 2
    # TRL's padding-free collator keeps rows apart on sdpa (transformers' per-row mask)
    assert bench.trl_rows_stay_apart(model, rows, tokenizer) < 1e-4
