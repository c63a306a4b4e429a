"""Benchmark suite for lstm_fused: correctness check, machine ceilings, timings against torch.nn.LSTM.

Entry point: ``python3 -m benchmarks.run`` (see ``benchmarks/run.py``) or ``bash benchmarks/run.sh``.
Modules, one concept each:
    cases       the Case record and the grids (CPU default/quick/full, GPU default/full)
    models      model rows: whole model steps (forecasting training, seq2seq decoding, a tagger)
    perf_model  FLOPs and fewest bytes of a case (docs/ARCHITECTURE.md, "Performance model")
    timing      interleaved, synchronized, median timing of several contenders
    contenders  nn.LSTM / lstm_fused.LSTM / reference built with the same weights, and their callables
    flashrnn_contender  FlashRNN (GPU, optional), wrapped so that its failures are recorded, not fatal
    ceilings    the machine's measured GEMM FLOP/s and memory-copy GB/s
    correctness lstm_fused.LSTM vs torch.nn.LSTM vs a float64 reference, before any timing
    machine     machine description and versions for the JSON
    report      progress lines, final table, JSON and PNG plot
"""
