"""CUDA tests: lstm_fused.LSTM on the GPU against torch.nn.LSTM (cuDNN) and the fp64 reference.

Every case runs on the persistent kernels and on the per-step fallback (forced through
LSTM_FUSED_CUDA_PATH) as well as on the automatic choice. Half types follow the STYLE.md rule: our
error against an fp64 computation is at most about twice that of torch.nn.LSTM run in the same
dtype, plus a small epsilon. Skipped where CUDA is not available.
"""
import copy
import contextlib
import dataclasses
import os
import random

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_fused
import lstm_fused.reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEV = "cuda"
PATHS = ("auto", "persistent", "fallback")


@contextlib.contextmanager
def cuda_path(path):
    old = os.environ.get("LSTM_FUSED_CUDA_PATH")
    if path == "auto":
        os.environ.pop("LSTM_FUSED_CUDA_PATH", None)
    else:
        os.environ["LSTM_FUSED_CUDA_PATH"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LSTM_FUSED_CUDA_PATH", None)
        else:
            os.environ["LSTM_FUSED_CUDA_PATH"] = old


@dataclasses.dataclass(frozen=True)
class Cfg:
    T: int = 5
    B: int = 3
    I: int = 4
    H: int = 6
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    batch_first: bool = False
    packed: str = ""  # "", "sorted" or "unsorted"
    bias: bool = True

    def kwargs(self):
        return dict(input_size=self.I, hidden_size=self.H, num_layers=self.layers, bias=self.bias,
                    batch_first=self.batch_first, bidirectional=self.bidirectional, proj_size=self.proj)

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def P(self):
        return self.proj or self.H


def make_models(cfg, dtype, seed):
    torch.manual_seed(seed)
    ref = nn.LSTM(**cfg.kwargs()).to(DEV, torch.float64)
    ours = lstm_fused.LSTM(**cfg.kwargs(), device=DEV, dtype=dtype)
    with torch.no_grad():
        for p in ref.parameters():  # weights representable in dtype, so every contender agrees
            p.copy_(p.to(dtype).to(torch.float64))
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    return ref, ours


def make_data(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    T, B = cfg.T, cfg.B
    x = torch.randn(B, T, cfg.I, generator=g, dtype=torch.float64) if cfg.batch_first else \
        torch.randn(T, B, cfg.I, generator=g, dtype=torch.float64)
    lengths = None
    if cfg.packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T
        if cfg.packed == "sorted":
            lengths = lengths.sort(descending=True).values
    LD = cfg.layers * cfg.D
    h0 = torch.randn(LD, B, cfg.P, generator=g, dtype=torch.float64)
    c0 = torch.randn(LD, B, cfg.H, generator=g, dtype=torch.float64)
    n_out = int(lengths.sum()) if cfg.packed else None
    gy = torch.randn(*((n_out,) if cfg.packed else x.shape[:2]), cfg.D * cfg.P, generator=g,
                     dtype=torch.float64)
    gh = torch.randn(LD, B, cfg.P, generator=g, dtype=torch.float64)
    gc = torch.randn(LD, B, cfg.H, generator=g, dtype=torch.float64)
    return dict(x=x, lengths=lengths, h0=h0, c0=c0, gy=gy, gh=gh, gc=gc)


def run(model, cfg, data, dtype, backward=True):
    """Forward (and backward under fixed upstream grads); returns a dict of named tensors."""
    x = data["x"].to(DEV, dtype).requires_grad_(backward)
    h0 = data["h0"].to(DEV, dtype).requires_grad_(backward)
    c0 = data["c0"].to(DEV, dtype).requires_grad_(backward)
    inp = x
    if cfg.packed:
        inp = pack_padded_sequence(x, data["lengths"], batch_first=cfg.batch_first,
                                   enforce_sorted=cfg.packed == "sorted")
    out, (h_n, c_n) = model(inp, (h0, c0))
    if cfg.packed:
        assert isinstance(out, PackedSequence)
        out = out.data
    res = {"out": out, "h_n": h_n, "c_n": c_n}
    if backward:
        loss = ((out * data["gy"].to(DEV, dtype)).sum() + (h_n * data["gh"].to(DEV, dtype)).sum()
                + (c_n * data["gc"].to(DEV, dtype)).sum())
        leaves = [("x", x), ("h0", h0), ("c0", c0)] + list(model.named_parameters())
        grads = torch.autograd.grad(loss, [t for _, t in leaves])
        for (name, _), gr in zip(leaves, grads):
            res["grad_" + name] = gr
    return {k: v.detach() for k, v in res.items()}


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check(ours, cudnn, ref64, dtype, label=""):
    """Prints every error, then asserts the dtype's rule."""
    assert ours.keys() == ref64.keys()
    fails = []
    for k in ref64:
        assert ours[k].shape == ref64[k].shape, (k, ours[k].shape, ref64[k].shape)
        assert ours[k].dtype == dtype, (k, ours[k].dtype)
        eo, ec = max_err(ours[k], ref64[k]), max_err(cudnn[k], ref64[k])
        scale = max(1.0, ref64[k].abs().max().item()) if ref64[k].numel() else 1.0
        print(f"{label} {k:24s} ours {eo:.3e}  cudnn {ec:.3e}  scale {scale:.2e}")
        assert eo == eo, k  # NaN never passes
        if dtype == torch.float32:
            ok = eo <= max(2 * ec, 2e-5 * scale)
        elif dtype == torch.float64:
            ok = eo <= 1e-9 * scale
        else:
            eps = (2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7) * scale
            ok = eo <= 2 * ec + eps
        if not ok:
            fails.append((k, eo, ec, scale))
    assert not fails, f"{label}: above tolerance (key, ours, cudnn, scale): {fails}"


def compare(cfg, dtype, path, seed=0, backward=True):
    ref, ours = make_models(cfg, dtype, seed)
    data = make_data(cfg, seed + 1)
    ref64 = run(ref, cfg, data, torch.float64, backward)
    cudnn_model = nn.LSTM(**cfg.kwargs()).to(DEV, dtype)
    cudnn_model.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    cudnn = run(cudnn_model, cfg, data, dtype, backward)
    with cuda_path(path):
        got = run(ours, cfg, data, dtype, backward)
    check(got, cudnn, ref64, dtype, label=f"{cfg} {dtype} {path}")


def random_cfgs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        H = rng.choice([1, 3, 17, 64, 130])
        out.append(Cfg(T=rng.choice([1, 2, 7, 19]), B=rng.choice([1, 3, 8, 16]), I=rng.choice([1, 5, 33]),
                       H=H, layers=rng.choice([1, 2]), bidirectional=rng.random() < 0.5,
                       proj=rng.choice([0, 0, max(1, H // 2)]) if H > 1 else 0,
                       batch_first=rng.random() < 0.3, packed=rng.choice(["", "", "sorted", "unsorted"]),
                       bias=rng.random() < 0.85))
    return out


CASES = random_cfgs(12, 1234)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_parity_random(cfg, dtype, path):
    compare(cfg, dtype, path, seed=hash((cfg, str(dtype))) % 1000)


BIG = [
    Cfg(T=40, B=16, I=64, H=768),
    Cfg(T=20, B=5, I=32, H=1024, packed="unsorted"),
    Cfg(T=12, B=40, I=16, H=256, bidirectional=True, proj=96),
    Cfg(T=9, B=100, I=8, H=128, packed="sorted"),
    Cfg(T=16, B=2, I=300, H=520, proj=200, bidirectional=True),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", BIG, ids=[f"big{i}" for i in range(len(BIG))])
def test_parity_large(cfg, dtype, path):
    compare(cfg, dtype, path, seed=7)


@pytest.mark.parametrize("cfg", CASES[:6], ids=[f"c{i}" for i in range(6)])
def test_float64_vs_reference(cfg):
    """fp64 on the GPU (fallback kernels) against lstm_fused.reference (explicit loop)."""
    ref, ours = make_models(cfg, torch.float64, 3)
    data = make_data(cfg, 4)
    got = run(ours, cfg, data, torch.float64, backward=False)
    x = data["x"].to(DEV)
    inp = pack_padded_sequence(x, data["lengths"], batch_first=cfg.batch_first,
                               enforce_sorted=cfg.packed == "sorted") if cfg.packed else x
    out, (h_n, c_n) = lstm_fused.reference.lstm_reference(ours, inp, (data["h0"].to(DEV), data["c0"].to(DEV)))
    out = out.data if cfg.packed else out
    for k, e in (("out", out), ("h_n", h_n), ("c_n", c_n)):
        print(k, max_err(got[k], e))
        assert max_err(got[k], e) <= 1e-10 * max(1.0, e.abs().max().item())


@pytest.mark.parametrize("path", ["persistent", "fallback"])
def test_persistent_matches_reference_fp32(path):
    """fp32 kernels against the fp32 reference loop (forward, packed, projection, bidirectional)."""
    cfg = Cfg(T=11, B=7, I=9, H=40, proj=24, bidirectional=True, packed="unsorted")
    ref, ours = make_models(cfg, torch.float32, 5)
    data = make_data(cfg, 6)
    with cuda_path(path):
        got = run(ours, cfg, data, torch.float32, backward=False)
    x = data["x"].to(DEV, torch.float32)
    inp = pack_padded_sequence(x, data["lengths"], enforce_sorted=False)
    out, (h_n, c_n) = lstm_fused.reference.lstm_reference(
        ours, inp, (data["h0"].to(DEV, torch.float32), data["c0"].to(DEV, torch.float32)))
    for k, e in (("out", out.data), ("h_n", h_n), ("c_n", c_n)):
        print(k, max_err(got[k], e))
        assert max_err(got[k], e) <= 1e-5


def test_gradcheck_float64():
    torch.manual_seed(0)
    T, B, I, H, P = 3, 3, 2, 4, 3
    bs = torch.tensor([3, 2, 1])
    N = int(bs.sum())
    d = dict(device=DEV, dtype=torch.float64, requires_grad=True)
    x = torch.randn(N, I, **d)
    w_ih, w_hh = torch.randn(4 * H, I, **d), torch.randn(4 * H, P, **d)
    b_ih, b_hh, w_hr = torch.randn(4 * H, **d), torch.randn(4 * H, **d), torch.randn(P, H, **d)
    h0, c0 = torch.randn(B, P, **d), torch.randn(B, H, **d)
    for reverse in (False, True):
        def f(*a):
            return torch.ops.lstm_fused.forward(*a[:6], a[6], a[7], bs, reverse, True)[:3]
        assert torch.autograd.gradcheck(f, (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0))
    xd = torch.randn(T, B, I, **d)
    w_hh2 = torch.randn(4 * H, H, **d)
    h02 = torch.randn(B, H, **d)

    def g(*a):
        return torch.ops.lstm_fused.forward(a[0], a[1], a[2], a[3], a[4], None, a[5], a[6], None, False, True)[:3]
    assert torch.autograd.gradcheck(g, (xd, w_ih, w_hh2, b_ih, b_hh, h02, c0))


@pytest.mark.parametrize("path", ["persistent", "fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic(path, dtype):
    cfg = Cfg(T=30, B=16, I=32, H=200, bidirectional=True, proj=64, packed="unsorted")
    _, ours = make_models(cfg, dtype, 11)
    data = make_data(cfg, 12)
    with cuda_path(path):
        a = run(ours, cfg, data, dtype)
        b = run(ours, cfg, data, dtype)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("path", ["persistent", "fallback"])
def test_cuda_graph(path):
    """Forward and backward ops captured in a CUDA graph and replayed on new inputs."""
    torch.manual_seed(0)
    T, B, I, H = 9, 4, 8, 32
    dt = dict(device=DEV, dtype=torch.float32)
    x = torch.randn(T, B, I, **dt)
    w_ih, w_hh = torch.randn(4 * H, I, **dt) * 0.3, torch.randn(4 * H, H, **dt) * 0.3
    b = torch.randn(4 * H, **dt)
    h0, c0 = torch.randn(B, H, **dt), torch.randn(B, H, **dt)
    gy = torch.randn(T, B, H, **dt)
    op_f, op_b = torch.ops.lstm_fused.forward, torch.ops.lstm_fused.backward

    def step():
        y, hn, cn, gates, cells = op_f(x, w_ih, w_hh, b, b, None, h0, c0, None, False, True)
        grads = op_b(gy, hn * 0, cn * 0, x, w_ih, w_hh, None, h0, c0, y, gates, cells, None, False, True)
        return (y, hn, cn) + tuple(grads)

    with cuda_path(path):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        for _ in range(2):
            x.copy_(torch.randn_like(x))
            h0.copy_(torch.randn_like(h0))
            graph.replay()
            torch.cuda.synchronize()
            eager = step()
            for a, e in zip(static_out, eager):
                print(max_err(a, e))
                assert torch.equal(a, e)


def test_torch_compile_fullgraph():
    cfg = Cfg(T=6, B=4, I=8, H=16, layers=2, bidirectional=True)
    _, ours = make_models(cfg, torch.float32, 21)
    data = make_data(cfg, 22)
    x = data["x"].to(DEV, torch.float32)
    hx = (data["h0"].to(DEV, torch.float32), data["c0"].to(DEV, torch.float32))

    def f(x, hx):
        out, (h, c) = ours(x, hx)
        return out.sum() + h.sum() + c.sum(), out

    compiled = torch.compile(f, fullgraph=True)
    lc, oc = compiled(x, hx)
    le, oe = f(x, hx)
    print(max_err(oc, oe))
    assert torch.allclose(oc, oe, atol=1e-6)


def test_long_sequence_100k():
    """T = 100,000 steps (cuDNN refuses that length): the forward against cuDNN run in chunks that
    carry the state, the gradients against the per-step fallback path."""
    cfg = Cfg(T=100_000, B=2, I=4, H=16)
    ref, ours = make_models(cfg, torch.float32, 31)
    cudnn = nn.LSTM(**cfg.kwargs()).to(DEV, torch.float32)
    cudnn.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    data = make_data(cfg, 32)
    x = data["x"].to(DEV, torch.float32)
    h, c = data["h0"].to(DEV, torch.float32), data["c0"].to(DEV, torch.float32)
    outs = []
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for t0 in range(0, cfg.T, 10_000):
            y, (h, c) = cudnn(x[t0:t0 + 10_000], (h, c))
            outs.append(y)
    expected = {"out": torch.cat(outs), "h_n": h, "c_n": c}
    with cuda_path("persistent"):
        got = run(ours, cfg, data, torch.float32)
    with cuda_path("fallback"):
        fb = run(ours, cfg, data, torch.float32)
    for k, e in list(expected.items()) + [(k, v) for k, v in fb.items() if k.startswith("grad")]:
        err = max_err(got[k], e)
        scale = max(1.0, e.abs().max().item())
        print(f"{k:20s} {err:.3e} scale {scale:.2e}")
        assert got[k].isfinite().all(), k
        assert err <= 1e-3 * scale, k


@contextlib.contextmanager
def forward_tuning(value):
    old = os.environ.get("LSTM_FUSED_CUDA_TUNING")
    os.environ["LSTM_FUSED_CUDA_TUNING"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LSTM_FUSED_CUDA_TUNING", None)
        else:
            os.environ["LSTM_FUSED_CUDA_TUNING"] = old


SYNC_CFGS = [
    Cfg(T=9, B=3, I=5, H=130),
    Cfg(T=13, B=40, I=7, H=67, packed="unsorted", bidirectional=True),  # two batch tiles
    Cfg(T=6, B=8, I=3, H=1000, layers=2),
    Cfg(T=5, B=4, I=6, H=33, proj=9),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", SYNC_CFGS, ids=[f"s{i}" for i in range(len(SYNC_CFGS))])
def test_forward_step_sync_variants_bitwise_equal(cfg, dtype):
    """grid.sync (default), release/acquire flags and fenced flags, with per-warp or tile
    staging, compute the same arithmetic in the same order: the outputs agree bit for bit
    (inference and training forward)."""
    ref, ours = make_models(cfg, dtype, 41)
    data = make_data(cfg, 42)
    results = {}
    with cuda_path("persistent"):
        for tuning in ("6", "2", "0", "1", "4"):
            with forward_tuning(tuning):
                results[tuning] = run(ours, cfg, data, dtype, backward=tuning in ("6", "0"))
    for tuning, res in results.items():
        for k in res:
            if k in results["6"]:
                assert torch.equal(res[k], results["6"][k]), (tuning, k, max_err(res[k], results["6"][k]))


CLUSTER_CFGS = [  # all within the cluster kernel's limit (units per block x padded rows <= 128)
    Cfg(T=20, B=5, I=7, H=130),
    Cfg(T=17, B=8, I=16, H=256, packed="unsorted", bidirectional=True),  # rows start late in reverse
    Cfg(T=9, B=3, I=5, H=240, layers=2),
    Cfg(T=12, B=1, I=3, H=8),
    Cfg(T=10, B=16, I=33, H=100, packed="sorted", batch_first=True),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", CLUSTER_CFGS, ids=[f"k{i}" for i in range(len(CLUSTER_CFGS))])
def test_cluster_kernel_parity(cfg, dtype):
    """Small half-type problems (B <= 8 at H <= 256) run in one thread-block cluster on sm_90:
    against cuDNN and float64 (forward and gradients), and against the grid-wide kernel (tuning
    bit 8 turns the cluster kernel off), whose different summation order shows (in fp16) that
    the two really are different kernels."""
    compare(cfg, dtype, "persistent", seed=11)
    ref, ours = make_models(cfg, dtype, 12)
    data = make_data(cfg, 13)
    with cuda_path("persistent"):
        got = run(ours, cfg, data, dtype, backward=False)
        with forward_tuning("262"):
            grid = run(ours, cfg, data, dtype, backward=False)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for k in got:
        assert got[k].isfinite().all(), k
        assert max_err(got[k], grid[k]) <= tol * max(1.0, grid[k].abs().max().item()), k
    # The two kernels split K differently, so their fp32 sums differ in the last bits, which
    # flips some fp16 roundings of h (bf16, with 3 fewer bits, can come out identical).
    if torch.cuda.get_device_capability(0)[0] >= 9 and cfg.H >= 64 and dtype == torch.float16:
        assert any(not torch.equal(got[k], grid[k]) for k in got), "cluster kernel not taken"


@pytest.mark.skipif(not torch.cuda.is_available() or
                    torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs 40 GiB of GPU memory")
def test_64bit_indexing():
    """T*B*4H > 2^31: the gate buffer's indices need 64 bits."""
    T, B, I, H = 8200, 64, 8, 1024
    assert T * B * 4 * H > 2**31
    torch.manual_seed(0)
    cudnn = nn.LSTM(I, H).to(DEV, torch.float16)
    ours = lstm_fused.LSTM(I, H, device=DEV, dtype=torch.float16)
    ours.load_state_dict(cudnn.state_dict())
    x = torch.randn(T, B, I, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        ya, (ha, ca) = cudnn(x)
        yb, (hb, cb) = ours(x)
        del x
        e = [max_err(yb[-4:], ya[-4:]), max_err(hb, ha), max_err(cb, ca)]
    print(e)
    assert max(e) < 5e-2


def test_autocast_fp16_matches_half_model():
    """Under CUDA autocast the module runs in the autocast dtype, as a half copy of it would."""
    torch.manual_seed(0)
    model = lstm_fused.LSTM(16, 32, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(7, 3, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y, (h, c) = model(x)
    half = copy.deepcopy(model).half()
    with torch.no_grad():
        y2, (h2, c2) = half(x.half())
    print("autocast dtypes", y.dtype, h.dtype, c.dtype)
    assert y.dtype == h.dtype == c.dtype == torch.float16
    assert torch.equal(y, y2) and torch.equal(h, h2) and torch.equal(c, c2)
    y.float().sum().backward()
    grad = model.weight_hh_l1_reverse.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("which", ["b_ih", "b_hh", "both", "none"])
@pytest.mark.parametrize("dtype,kernel", [(torch.float32, "grid"), (torch.float32, "fallback"),
                                          (torch.float16, "cluster"), (torch.float16, "grid"),
                                          (torch.float16, "fallback")], ids=str)
def test_op_biases_added_by_each_kernel(dtype, kernel, which, reverse):
    """The persistent and cluster kernels add b_ih and b_hh to the input projection themselves
    (the fallback adds them in the adapter's GEMM); the op takes either bias alone. Against an fp64
    loop over the same op arguments, with biases large enough that dropping one fails."""
    T, B, I, H = 6, 4, 24, 128
    g = torch.Generator().manual_seed(5)
    w_ih, w_hh = (torch.randn(4 * H, k, generator=g, dtype=torch.float64) * 0.2 for k in (I, H))
    b_ih, b_hh = (torch.randn(4 * H, generator=g, dtype=torch.float64) for _ in range(2))
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0, c0 = (torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2))
    bi = b_ih if which in ("b_ih", "both") else None
    bh = b_hh if which in ("b_hh", "both") else None
    args = [t.to(DEV, dtype) if t is not None else None for t in (x, w_ih, w_hh, bi, bh)]
    xs, wi, wh, bi64, bh64 = (t.cpu().double() if t is not None else torch.zeros(4 * H, dtype=torch.float64)
                              for t in args)
    want, h, c = lstm_fused.reference._cell_loop(xs, torch.full((B,), T), h0.to(dtype).double(),
                                                 c0.to(dtype).double(), wi, wh, bi64, bh64, None, reverse)
    path, tuning = {"cluster": ("persistent", "6"), "grid": ("persistent", "262"),
                    "fallback": ("fallback", "6")}[kernel]
    with cuda_path(path), forward_tuning(tuning):
        y, h_n, c_n, _, _ = torch.ops.lstm_fused.forward(*args, None, h0.to(DEV, dtype), c0.to(DEV, dtype),
                                                         None, reverse, False)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert max_err(y.cpu(), want) < tol
    assert max_err(h_n.cpu(), h) < tol
    assert max_err(c_n.cpu(), c) < tol * 4


@pytest.mark.parametrize("dtype,H,P", [(torch.float16, 2048, 1024), (torch.float32, 3072, 384)], ids=str)
def test_projection_too_large_for_the_kernel_falls_back(dtype, H, P):
    """W_hh of these fits the plain persistent kernel's shared memory but not with the W_hr slice
    beside it: the adapter must plan with the projection and take the per-step fallback."""
    compare(Cfg(T=3, B=2, I=16, H=H, proj=P), dtype, "auto", seed=3, backward=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", CLUSTER_CFGS + [Cfg(T=9, B=24, I=16, H=256, packed="unsorted"),
                                                 Cfg(T=300, B=4, I=8, H=40)],
                         ids=[f"k{i}" for i in range(len(CLUSTER_CFGS) + 2)])
def test_cluster_exchange_variants_bitwise_equal(cfg, dtype):
    """The cluster kernel's two h exchanges (st.async counted on mbarriers, the default; DSMEM
    stores + a cluster barrier, tuning bit 9) move the same bits: equal outputs, also with the
    item limit lifted (tuning bit 10; the next-to-last config is beyond it). The last one leaves
    11 of 16 blocks without units (they sit the steps out) over many steps."""
    ref, ours = make_models(cfg, dtype, 21)
    data = make_data(cfg, 22)
    with cuda_path("persistent"):
        outs = {}
        for tuning in ("6", "518", "1030", "1542"):
            with forward_tuning(tuning):
                outs[tuning] = run(ours, cfg, data, dtype, backward=False)
    for a, b in (("6", "518"), ("1030", "1542")):
        for k in outs[a]:
            assert torch.equal(outs[a][k], outs[b][k]), (a, b, k)
