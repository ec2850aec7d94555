"""Resume maps the checkpoint file instead of reading it into each process's memory (issue 12,
2.8): under torchrun every rank loads the unsharded state, and mapped pages are shared through
the page cache while read copies are not. Measured in a fresh process; the restored state must
still equal the saved one exactly. The larger measurement runs the same probe:

    python tests/test_checkpoint.py 64     # a checkpoint of a 64-layer (~800 MB) model
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def build(layers: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def anon_mib() -> float:
    """Anonymous resident memory: what a read copy of the file occupies, and a mapping does not."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+)", status).group(1)) / 1024


def probe(directory: Path, layers: int) -> dict:
    """Load the checkpoint in `directory` into a fresh model and optimizer (as a resuming stage
    does); returns the anonymous memory the loaded state took, the file size and whether the
    restored state equals the saved one."""
    import resource

    from pear_exp.train import checkpoint
    from pear_exp.train.distributed import World

    model, opt, sched = build(layers)
    at_restore = {}
    restore = World.load_full_state

    def spy(self, *args, **kwargs):  # the state has been loaded; nothing is restored yet
        at_restore["anon"] = anon_mib()
        return restore(self, *args, **kwargs)

    World.load_full_state = spy
    before, base_peak = anon_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = checkpoint.load(directory, model, opt, sched, World())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = torch.load(checkpoint.latest(directory) / "state.pt", weights_only=False)
    model_state, optim_state = World().full_state(model, opt)
    exact = (all(torch.equal(model_state[k], v) for k, v in saved["model"].items())
             and all(torch.equal(optim_state["state"][p][k], v)
                     for p, s in saved["optimizer"]["state"].items() for k, v in s.items()))
    size = (checkpoint.latest(directory) / "state.pt").stat().st_size / 2**20
    return {"step": step, "exact": exact, "file_mib": size,
            "state_anon_mib": at_restore["anon"] - before,
            "extra_peak_rss_mib": (peak - base_peak) / 1024}


def save(directory: Path, layers: int) -> None:
    from pear_exp.train import checkpoint
    from pear_exp.train.distributed import World

    model, opt, sched = build(layers)
    for _ in range(2):  # optimizer state that differs from a fresh one
        model(torch.randn(4, 1024)).square().sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    checkpoint.save(directory, 2, model, opt, sched, World())


def run_probe(directory: Path, layers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, str(layers), str(directory)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_resume_maps_the_checkpoint_instead_of_copying_it(tmp_path):
    save(tmp_path, 8)
    result = run_probe(tmp_path, 8)
    assert result["step"] == 2 and result["exact"]
    assert result["file_mib"] > 90  # 8.4M parameters, AdamW's two moments: about 100 MiB
    assert result["state_anon_mib"] < result["file_mib"] / 10, result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    layers = int(sys.argv[1])
    if len(sys.argv) > 2:
        print(json.dumps(probe(Path(sys.argv[2]), layers)))
    else:  # save, then measure in a fresh process
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp), layers)
            print(json.dumps(run_probe(Path(tmp), layers)))
