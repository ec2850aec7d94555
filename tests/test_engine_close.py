"""Engine lifetime (issue 12, 2.9): the pipeline creates a vLLM engine per stage and checkpoint;
closing each one must give its memory back. Each variant runs in a fresh process (its memory is
then this engine's alone), measured as the RSS of that process and its children."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from tests.conftest import make_tiny_model  # noqa: E402

KV_CACHE = 1 << 30  # the CPU engine's default KV cache, 1 GiB
MIB = 1 << 20

CYCLES = """
import gc, json, sys
import psutil
import vllm  # noqa: F401  (imported before the first reading: not an engine's memory)
from transformers import AutoTokenizer
from pear_exp.rollout.vllm import VLLMEngine

def rss():
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])

def main(path, cycles, close, kv_cache):
    tokenizer = AutoTokenizer.from_pretrained(path)
    readings = [rss()]
    for _ in range(cycles):
        engine = VLLMEngine(path, tokenizer, max_model_len=256, kv_cache_memory_bytes=kv_cache)
        engine.generate([[5, 6, 7]], n=2, max_new_tokens=4, stop_token_ids=[], seed=1)
        if close:
            engine.close()
        del engine
        gc.collect()
        readings.append(rss())
    print("RSS", json.dumps(readings))

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "close", int(sys.argv[4]))
"""


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
def test_closing_engines_keeps_memory_flat_and_not_closing_does_not(tokenizer, tmp_path):
    make_tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    script = tmp_path / "cycles.py"
    script.write_text(CYCLES)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_WAIT_POLICY": "PASSIVE"}
    runs = {close: subprocess.Popen(  # both at once: each measures its own process tree
        [sys.executable, str(script), str(tmp_path / "model"), str(cycles), close, str(KV_CACHE)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for close, cycles in (("close", 4), ("keep", 2))}
    rss = {}
    try:
        for close, proc in runs.items():
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err[-3000:]
            rss[close] = [r / MIB for r in json.loads(out.split("RSS ", 1)[1])]
    finally:
        for proc in runs.values():
            proc.kill()  # no-op for a finished one
            proc.wait()
    closed, kept = rss["close"], rss["keep"]
    print(f"RSS MiB, closed after each of 4 cycles: {[round(r) for r in closed]}; "
          f"never closed, 2 cycles: {[round(r) for r in kept]}")
    # Closed: after the first cycle (which also pays one-time costs: lazy imports, kernels,
    # below one KV cache) three more cycles add less than a sixteenth of one KV cache.
    assert closed[1] - closed[0] < KV_CACHE / MIB
    assert max(closed[1:]) - closed[1] < KV_CACHE / MIB / 16
    # Never closed: at least one engine's KV cache is never given back.
    assert kept[-1] - kept[0] > KV_CACHE / MIB
