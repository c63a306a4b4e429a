"""DistributedDataParallel over two CPU processes (gloo, loopback) averages gradients exactly as
one process computing the mean loss over the whole batch would."""

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import ddp_worker

pytestmark = pytest.mark.distributed


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    world_size = 2
    context = mp.start_processes(ddp_worker.run_rank, args=(world_size, free_port(), str(tmp_path)),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # raises if a worker fails
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 240 s")
    expected = ddp_worker.grads_single_process()
    for rank in range(world_size):
        grads = torch.load(tmp_path / f"grads_rank{rank}.pt")
        assert list(grads) == list(expected)
        for name, g in expected.items():
            err = (grads[name] - g).abs().max().item()
            print(f"rank {rank} {name:24s} max abs err {err:.3e}")
            torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-12, msg=name)
