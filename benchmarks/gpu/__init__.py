"""The GPU checks of issues 5 and 6, as one short script for a lent GPU machine.

    python -m benchmarks.gpu --out DIR [--device cuda] [--budget-s 420] [--tiny]

Stages, each written to ``DIR/gpu.json`` as soon as it finishes (so a run cut off
by its time limit still leaves what it measured), each failure recorded with its
traceback instead of ending the run:

1. ``correctness``: a converted 2-layer GPT (mixing logits perturbed) in every mode,
   compiled with ``backend="mhc"`` (and ``inline_projection=False`` for mhc): forward
   and gradients against eager float32 and float64, TF32 off; 10 SGD steps compiled
   against eager.
2. ``kernels``: Triton kernel launches in the generated code (inference; training
   forward + backward) for the plain model under Inductor, and the converted one under
   ``backend="mhc"`` with and without ``inline_projection``; mixing kernels per site;
   no extern ``mix`` call.
3. ``site``: one site at (8, 512, 768), float32 / bfloat16, K = 2, 4, 8: eager op,
   default Inductor, ``backend="mhc"`` (with and without ``inline_projection``),
   against a device-to-device copy of the same bytes: time, GB/s, fraction of the
   copy's GB/s; on CUDA also with the calls replayed from a CUDA graph.
4. ``train``: the 12-layer GPT of the end-to-end benchmark, one AdamW training step
   and one inference forward, plain vs converted, per execution mode; time, the peak
   memory of one step above what was alive before it, first-call (compile) time; at each
   width of ``--dims`` (default 384).
5. ``composition``: activation checkpointing applied from outside (gradients against none;
   the recompute runs in autograd's device thread) and 8 threads sharing the model.

Timings: CUDA events around ``reps`` calls, candidates interleaved, median of the
rounds; inputs rotate over enough sets to defeat the L2 cache. Nothing here is
asserted: the script prints and saves. ``--device cpu --tiny`` is the smoke test
that keeps it from rotting on machines with no GPU.
"""
