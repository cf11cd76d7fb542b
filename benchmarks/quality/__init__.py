"""Training-quality study: does mHC train better? ``python -m benchmarks.quality [--quick | --full] [--out DIR]``.

A byte-level pre-norm GPT (`mhc_fx.demo.model.GPT`) on the Python standard library's own source
(`mhc_fx.demo.data`), at several depths, converted with every mixing variant, trained for a fixed step
budget at a few learning rates and seeds. One module per job:

    profiles       the sizes of --quick and --full (model, data, grid, step budget)
    variants       the mixing variants: name -> keyword arguments of `mhc_fx.convert`
    train          one run (depth, variant, lr, seed): losses, gradient norms, alphas, time per step
    metrics        divergence, gradient noise, effective depth; mean and std over seeds; paired deltas
    runner         every run of the grid in worker processes, with progress lines and a time budget
    tables         results.md: the markdown tables
    plots          loss curves per depth and alpha heat maps per site (matplotlib; skipped when missing)
    cli            the command line
    lr_probe       ``python -m benchmarks.quality.lr_probe``: where does the plain residual model struggle?
    compile_probe  ``python -m benchmarks.quality.compile_probe``: eager or backend="mhc" for the study?
"""
