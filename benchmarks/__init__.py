"""The mhc_fx benchmark suite: ``python -m benchmarks.run [--quick | --full] [--out DIR]``.

One module per job:

    timing       interleaved, repeated, median timer (no thresholds anywhere)
    memory       peak tensor bytes of one call, from the profiler's memory timeline
    machine      what the run ran on (CPU, cores, torch, load average)
    bandwidth    1. the limit: streaming bandwidth (copy / add / triad)
    mixing       2. one mixing site: ours eager / Inductor / backend "mhc", the `mhc` package
    models       the GPT variants of the end-to-end comparison (ours and the peers')
    peers        which peer packages are importable, and their versions
    end_to_end   3. training step and inference forward of a GPT, every variant and mode
    scaling      4. convert and compile time against depth; mixing cost against K
    targets      the issue's targets, evaluated as met / missed (never asserted)
    report       results.md (tables) and results.png (plot)
    profiles     the sizes of --quick and --full
    run          the command line
"""
