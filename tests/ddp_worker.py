"""Worker of test_ddp.py: one rank of a 2-process gloo DistributedDataParallel
step, on a model holding an lstm_fused.LSTM or (kind="gru") an lstm_fused.GRU.

Lives in its own module so that torch.multiprocessing's spawn can import it in the children.
"""

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

import lstm_fused


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = lstm_fused.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3,
                                   batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y).pow(2).mean() + h.sum(0).pow(2).mean() + c.mean()


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = lstm_fused.GRU(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        y, h = self.rnn(x)
        return self.head(y).pow(2).mean() + h.sum(0).pow(2).mean()


NETS = {"lstm": Net, "gru": GRUNet}


def make_model_and_batch(seed=0, batch=8, kind="lstm"):
    torch.manual_seed(seed)
    model = NETS[kind]().double()
    x = torch.randn(batch, 7, 5, dtype=torch.float64)
    return model, x


def grads_single_process(kind="lstm"):
    model, x = make_model_and_batch(kind=kind)
    model(x).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def run_rank(rank, world_size, port, out_dir, kind="lstm"):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model, x = make_model_and_batch(kind=kind)
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = x.chunk(world_size)[rank]
        ddp(shard).backward()
        grads = {n.removeprefix("module."): p.grad.clone() for n, p in ddp.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads_rank{rank}.pt"))
        dist.barrier()  # both ranks done with every collective before either tears down
    finally:
        dist.destroy_process_group()
