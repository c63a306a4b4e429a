"""DistributedDataParallel over two CPU processes (gloo, loopback), on a model holding an
lstm_fused.LSTM or an lstm_fused.GRU, averages gradients exactly as one process computing the mean
loss over the whole batch would."""

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import ddp_worker
from utils import CELL_NAMES

pytestmark = pytest.mark.distributed


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world_size, out_dir, kind):
    context = mp.start_processes(ddp_worker.run_rank, args=(world_size, free_port(), str(out_dir), kind),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # raises if a worker fails
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 240 s")


@pytest.mark.parametrize("kind", CELL_NAMES)
def test_ddp_two_processes_match_single_process(kind, tmp_path):
    """About 1 run in 40-50 on the 2-core VM, rank 0 died with SIGABRT ("terminate called without
    an active exception") after both ranks had saved their gradients, i.e. in the teardown of the
    gloo group or of the process (a barrier before destroy_process_group did not remove it). Such
    a run is repeated once; any other failure, a second abort, or wrong gradients fail the test."""
    world_size = 2
    for attempt in range(2):
        out = tmp_path / f"attempt{attempt}"
        out.mkdir()
        try:
            run_workers(world_size, out, kind)
            break
        except mp.ProcessExitedException as e:
            saved = all((out / f"grads_rank{r}.pt").exists() for r in range(world_size))
            if attempt == 1 or e.signal_name != "SIGABRT" or not saved:
                raise
            print(f"attempt {attempt}: a worker aborted after saving its gradients ({e}); again")
    expected = ddp_worker.grads_single_process(kind=kind)
    assert any(name.startswith("rnn.weight_hh_l1_reverse") for name in expected)
    for rank in range(world_size):
        grads = torch.load(out / f"grads_rank{rank}.pt")
        assert list(grads) == list(expected)
        for name, g in expected.items():
            err = (grads[name] - g).abs().max().item()
            print(f"rank {rank} {name:24s} max abs err {err:.3e}")
            torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=name)
