"""results.md (markdown tables) and results.png (plot) from a run's results dict."""

from __future__ import annotations

from pathlib import Path


def _ms(seconds) -> str:
    return f"{seconds * 1e3:.3g}" if seconds is not None else "–"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _others(row) -> str:
    """The share of CPU time other processes used while the row was timed."""
    share = row.get("timing", {}).get("other_cpu_share")
    return "?" if share is None else f"{share:.0%}"


def _met(flag) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[flag]


def header(results) -> list[str]:
    m, meta = results["machine"], results["meta"]
    peers = ", ".join(f"{k} {v}" for k, v in meta["peers"].items())
    return [
        f"# mhc_fx benchmarks ({meta['profile']})",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {m['date_utc']}; run took {meta['duration_s'] / 60:.1f} min",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"{m.get('last_level_cache_mb', '?')} MB last-level cache",
        f"- load average at start {m['load_average_at_start']}, at end {meta.get('load_average_at_end')}; "
        f"waited {meta.get('waited_for_quiet_s', 0):.0f} s for other processes to quiet down",
        f"- software: mhc_fx at {meta['source']}, torch {m['torch']}, Python {m['python']}; peers: {peers}",
        "- every time is the median of interleaved rounds in one process; no thresholds are asserted",
        "",
    ]


def targets(results) -> list[str]:
    rows = [[t["target"], t["case"], t["display"], _met(t["met"])] for t in results["targets"]]
    return ["## Targets", "", *_table(["target", "case", "measured", "status"], rows)]


def bandwidth(results) -> list[str]:
    b = results["bandwidth"]
    rows = [
        [
            name,
            _ms(k["time_s"]),
            f"{k['bytes'] / 1e9:.3g}",
            f"{k['gb_s']:.1f}",
            f"{k['gb_s_write_allocate']:.1f}",
            _others(k),
        ]
        for name, k in b["kernels"].items()
    ]
    return [
        f"## 1. The limit: streaming bandwidth ({b['vector_mb']:g} MB float32 vectors)",
        "",
        *_table(["kernel", "time (ms)", "GB moved", "GB/s", "GB/s, write-allocate", "others"], rows),
        f"Limit: **{b['limit_gb_s']:.1f} GB/s** ({b['limit_kernel']}; bytes: {b['bytes_counting']}); "
        f"write-allocate limit {b['limit_gb_s_write_allocate']:.1f} GB/s ({b['limit_kernel_write_allocate']}).",
        "",
    ]


def mixing(results) -> list[str]:
    mx = results["mixing"]
    rows = []
    for r in mx["rows"]:
        if "time_s" not in r:
            rows.append([r["dtype"], r["K"], r["label"], r["status"], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["dtype"],
                r["K"],
                r["label"],
                _ms(r["time_s"]),
                f"{r['bytes'] / 2**20:.3g}",
                f"{r['gb_s']:.1f}",
                f"{r['limit_gb_s']:.1f}",
                f"{r['fraction_of_limit']:.0%}",
                f"{r['fraction_of_limit_write_allocate']:.0%}",
                _others(r),
            ]
        )
    head = ["dtype", "K", "variant", "time (ms)", "MB moved", "GB/s", "limit GB/s", "of limit", "write-alloc."]
    head.append("others")
    return [
        f"## 2. One mixing site, (B, T, C) = {tuple(mx['shape'])}",
        "",
        f"Limit: {mx['limit']}; 'write-alloc.': the fraction with every write counted twice on both sides.",
        "",
        *_table(head, rows),
    ]


def end_to_end(results) -> list[str]:
    e = results["end_to_end"]
    g = e["model"]
    title = (
        f"## 3. End to end: GPT, {g['layers']} layers, d = {g['dim']}, T = {g['seq']}, B = {g['batch']}, "
        f"vocab {g['vocab']}, H = {g['history']}, {g['streams']} streams for hyper-connections"
    )
    rows = []
    for r in e["rows"]:
        if "time_s" not in r:
            rows.append([r["task"], r["mode"], r["label"], r["status"], "", "", "", "", ""])
            continue
        rows.append(
            [
                r["task"],
                r["mode"],
                r["label"],
                _ms(r["time_s"]),
                f"{r['ratio_to_residual'] - 1:+.1%}",
                f"{r['peak_mb']:.1f}",
                f"{r['compile_s']:.1f}" if "compile_s" in r else "–",
                r.get("graphs", "–"),
                _others(r),
            ]
        )
    head = ["task", "mode", "model", "time (ms)", "vs residual", "peak MB", "compile (s)", "graphs", "others"]
    note = (
        f"Peak MB: tensor bytes allocated during one step and alive at its peak (activations, gradients, "
        f"temporaries; parameters and optimizer state excluded). One state is {e['state_mb']:.1f} MB, "
        f"the history window {e['history_window_mb']:.1f} MB."
    )
    return [title, "", *_table(head, rows), note, ""]


def scaling(results) -> list[str]:
    s = results["scaling"]
    conv = [[r["layers"], _ms(r["time_s"])] for r in s["convert"]]
    by_depth: dict = {}
    for r in s["compile"]:
        by_depth.setdefault(r["layers"], {})[r["model"]] = r
    comp = [
        [
            d,
            f"{v['residual']['compile_s']:.1f}",
            f"{v['convert_mhc']['compile_s']:.1f}",
            f"{v['convert_mhc']['compile_s'] / v['residual']['compile_s']:.2f}",
        ]
        for d, v in by_depth.items()
    ]
    ks = [
        [r["K"], r["label"], _ms(r["time_s"]), _ms(r["time_s"] / (r["K"] + 2)), f"{r['fraction_of_limit']:.0%}"]
        for r in s["mixing_vs_k"]
        if "time_s" in r
    ]
    return [
        "## 4. Scaling",
        "",
        f'`convert(mode="mhc", max_history=4)` of a GPT of width {s["width"]}:',
        "",
        *_table(["layers", "convert (ms)"], conv),
        "Cold compile of the inference forward (one compile each):",
        "",
        *_table(["layers", "residual, Inductor (s)", 'mhc, backend "mhc" (s)', "ratio"], comp),
        "Mixing cost against K (float32, one site):",
        "",
        *_table(["K", "variant", "time (ms)", "ms per tensor moved", "of limit"], ks),
    ]


def markdown(results) -> str:
    """The whole report as markdown."""
    parts = [header, targets, bandwidth, mixing, end_to_end, scaling]
    return "\n".join(line for part in parts for line in part(results))


def plot(results, path: Path) -> str | None:
    """Write the plot; return None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: plot skipped"
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    _plot_mixing(axes[0], results)
    _plot_end_to_end(axes[1], results)
    _plot_compile(axes[2], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _bars(ax, groups, series, value, label):
    """Grouped bars: one group per entry of ``groups``, one bar per entry of ``series``."""
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        ax.bar([j + i * width for j in range(len(groups))], [value(g, s) for g in groups], width, label=label(s))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.legend(fontsize=7)


def _lookup(rows, field, **match):
    return next((r[field] for r in rows if all(r[k] == v for k, v in match.items())), 0)


def _plot_mixing(ax, results):
    rows = [r for r in results["mixing"]["rows"] if "time_s" in r]
    groups = sorted({(r["dtype"], r["K"]) for r in rows})
    labels = {r["variant"]: r["label"] for r in rows}
    _bars(
        ax,
        groups,
        list(labels),
        lambda g, v: _lookup(rows, "fraction_of_limit", dtype=g[0], K=g[1], variant=v),
        labels.get,
    )
    ax.set_xticklabels([f"{d[:4]} K={k}" for d, k in groups], fontsize=8)
    ax.axhline(0.8, color="k", ls="--", lw=0.8)
    ax.set_ylabel("fraction of streaming bandwidth")
    ax.set_title("one mixing site")


def _plot_end_to_end(ax, results):
    rows = [r for r in results["end_to_end"]["rows"] if "time_s" in r and r["task"] == "train"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    labels = {r["model"]: r["label"] for r in rows}
    _bars(ax, modes, list(labels), lambda mode, m: _lookup(rows, "time_s", mode=mode, model=m), labels.get)
    ax.set_xticklabels(modes)
    ax.set_ylabel("seconds per training step")
    ax.set_title("GPT training step")


def _plot_compile(ax, results):
    rows = results["scaling"]["compile"]
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["layers"], r["compile_s"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*pts), marker="o", label=f"{model} ({next(r['backend'] for r in rows if r['model'] == model)})")
    ax.set_xlabel("layers")
    ax.set_ylabel("compile time (s), inference forward")
    ax.set_title("compile time against depth")
    ax.legend(fontsize=7)
