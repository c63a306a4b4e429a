"""A few forwards of one shape, for Nsight Compute (ncu) to profile the persistent kernel.

    ncu -k regex:forward_kernel --launch-skip 2 --launch-count 1 ... python3 -m benchmarks.cuda_profile B T H dtype

The forward tuning comes from LSTM_FUSED_CUDA_TUNING as usual.
"""
import sys

import torch

import lstm_fused


def main():
    B, T, H = (int(v) for v in sys.argv[1:4])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[sys.argv[4]]
    torch.manual_seed(0)
    model = lstm_fused.LSTM(H, H, device="cuda", dtype=dtype)
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(4):
            model(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
