"""Inspect a converted model: α heat maps, the rewrite per site, state contributions, gradient flow, a logger.

Everything here reads a model returned by `mhc_fx.convert` (or its ``torch.compile`` wrapper) and never
changes it. The plots need matplotlib (``pip install "mhc_fx[plot]"``), imported only when one is drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import inspect as pyinspect
import re

import torch
from torch import nn

from .transform.convert import RUNTIME, converted_root, format_loc, mixing_weights
from .transform.source import add_locations, innermost

PLOT_EXTRA = 'pip install "mhc_fx[plot]"'


def _converted(model) -> nn.Module:
    """The converted eager model behind ``model`` (a ``torch.compile`` or peft wrapper is unwrapped)."""
    return converted_root(model)


def _norm(t: torch.Tensor | None) -> float | None:
    return None if t is None else float(torch.linalg.vector_norm(t.detach().float()))


def _entropy(alpha: torch.Tensor) -> float:
    """-Σ α log α in nats (0 log 0 = 0): 0 for a one-hot α, log K for a uniform one."""
    return float(torch.special.entr(alpha.detach().double()).sum())


# -- plotting helpers ------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib  # noqa: F401  (first: a cached matplotlib.pyplot would hide a blocked matplotlib)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"mhc_fx plotting needs matplotlib, which is not installed: {PLOT_EXTRA}") from exc
    return plt


def _axes(ax, figsize):
    """(figure, axes): ``ax`` and its figure, or a new figure that pyplot does not keep open (so a notebook
    shows it once, as the cell's value, and loops do not pile figures up)."""
    plt = _pyplot()
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig, ax


def _heatmap(rows: dict[str, list[float]], ax, *, title: str, label: str, vmin=None, vmax=None):
    """Rows right-aligned on the history offset (latest state rightmost); blank where a site's K is smaller."""
    import numpy as np

    if not rows:
        raise ValueError("nothing to plot: the model has no residual site")
    width = max(len(v) for v in rows.values())
    grid = np.full((len(rows), width), np.nan)
    for i, values in enumerate(rows.values()):
        grid[i, width - len(values) :] = values
    fig, ax = _axes(ax, (2.5 + 0.8 * width, 1.2 + 0.3 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(width), [f"t-{width - 1 - j}" if j < width - 1 else "t" for j in range(width)])
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("history state (t = the latest stream)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    if grid.size <= 256:
        top = np.nanmax(grid) if vmax is None else vmax
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="k" if v > top / 2 else "w")
    return fig


def plot_weights(model, ax=None):
    """Heat map of α: one row per site in execution order, one column per history state, the latest state
    rightmost (``t``), older ones to its left (``t-1`` …), blank where a site mixes fewer states. Returns
    the matplotlib Figure (drawn on ``ax`` when given). Values are `mhc_fx.mixing_weights(model)`."""
    rows = {name: a.float().cpu().tolist() for name, a in _alphas(_converted(model)).items()}
    return _heatmap(rows, ax, title="mixing weights α per site", label="α", vmin=0.0, vmax=1.0)


def _alphas(model) -> dict:
    """`mixing_weights` of the history sites (a stream site's maps are `plot_streams`' business)."""
    return {name: a for name, a in mixing_weights(model).items() if isinstance(a, torch.Tensor)}


def plot_streams(model, max_sites: int = 12):
    """The static H_res (n × n, row k: from stream k) of up to ``max_sites`` n-stream sites in execution
    order, one heat map each, with H_pre and H_post in the title. Returns the matplotlib Figure."""
    plt = _pyplot()
    maps = {n: m for n, m in mixing_weights(_converted(model)).items() if isinstance(m, dict)}
    if not maps:
        raise ValueError("the model has no n-stream site: convert it with streams=n (n >= 2)")
    names = list(maps)[:max_sites]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        m = maps[name]
        ax.imshow(m["res"].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        pre = " ".join(f"{v:.2f}" for v in m["pre"].tolist())
        post = " ".join(f"{v:.2f}" for v in m["post"].tolist())
        ax.set_title(f"{name}\npre {pre}\npost {post}", fontsize=7)
        ax.set_xlabel("to stream")
        ax.set_ylabel("from stream")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_contributions(contributions: dict[str, list[float]], ax=None):
    """Heat map of `history_contributions` (‖α_k s_k‖ per site and history state), laid out as `plot_weights`."""
    return _heatmap(contributions, ax, title="contribution of each history state", label="‖α_k · s_k‖")


def plot_gradient_flow(flow: dict[str, dict], ax=None):
    """Bars of ‖∂L/∂θ‖ per site (0 without logits) from `gradient_flow`, with ‖∂L/∂y‖ per site as dots
    where it was measured; log scale. Returns the Figure."""
    names = list(flow)
    fig, ax = _axes(ax, (1.5 + 0.45 * len(names), 3.5))
    logits = [flow[n]["logits"] or 0.0 for n in names]
    ax.bar(range(len(names)), logits, color="steelblue", label="‖∂L/∂θ‖ (site logits)")
    outputs = [(i, flow[n]["output"]) for i, n in enumerate(names) if flow[n].get("output") is not None]
    if outputs:
        ax.plot(*zip(*outputs), "o", color="coral", label="‖∂L/∂y‖ (site output)")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    if any(v > 0 for v in logits) or outputs:
        ax.set_yscale("log")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient flow per site")
    ax.legend(fontsize=8)
    return fig


# -- the rewrite, per forward ----------------------------------------------------------------------------------
@dataclasses.dataclass
class RewriteView:
    """Each rewritten forward's source with its additions marked (``str()`` as text, an HTML block in
    notebooks). ``lines`` holds ``(kind, text)`` with kind ``"head"``, ``"code"``, ``"site"`` or ``"skip"``."""

    lines: list[tuple[str, str]]

    def __str__(self) -> str:
        return "\n".join(text for _, text in self.lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        style = {"head": "font-weight:bold", "site": "color:#1a7f37", "skip": "color:#888", "code": ""}
        body = "\n".join(f'<span style="{style[k]}">{html.escape(t)}</span>' for k, t in self.lines)
        return f'<pre style="font-size:12px;line-height:1.3">{body}</pre>'


def _after(spec, config) -> str:
    if spec.streams:
        return config.stream_mode.describe(spec.window)
    mode = config.site_mode
    if spec.window == 1:
        return "y = s + b (K = 1: first site of its chain, a plain add)"
    return mode.describe(spec.window)


def _group_adds(model: nn.Module, runtime) -> tuple[dict, list]:
    """{forward's class: {"paths", "sites": {loc: [spec]}, "skipped": {loc: [reason]}}} and the skipped
    additions that name no (module, location)."""
    modules = {path: (i, m) for i, (path, m) in enumerate(model.named_modules())}
    groups, unplaced = {}, []

    def entry(path: str) -> dict:
        group = groups.setdefault(type(modules[path][1]), {"paths": set(), "sites": {}, "skipped": {}})
        group["paths"].add(path)
        return group

    for spec in runtime.sites.values():
        # an add in a helper the forward called (loc (call, add)) is shown at the call
        loc = spec.key[1][0] if isinstance(spec.key[1], tuple) else spec.key[1]
        entry(spec.key[0])["sites"].setdefault(loc, []).append(spec)
    for skip in runtime.report.skipped:
        m = re.fullmatch(r"(.*) add#(\d+)((?:\.\d+)*)(?: \(call \d+\))?", skip.where)
        path = m and ("" if m[1] == "(root)" else m[1])
        if path not in modules:  # not of the form "<module path> add#<loc>"
            unplaced.append(skip)
            continue
        entry(path)["skipped"].setdefault(int(m[2]), []).append(skip.reason)
    for group in groups.values():
        group["paths"] = sorted(group["paths"], key=lambda p: modules[p][0])
    return groups, unplaced


def _forward_lines(cls: type, group: dict, config) -> list[tuple[str, str]]:
    fn = innermost(cls.forward)  # through functools.wraps and plain passthrough wrappers
    paths = ", ".join(p or "(root)" for p in group["paths"])
    try:
        source, first = pyinspect.getsourcelines(fn)
        where = f"{pyinspect.getsourcefile(fn)}:{first}"
    except (OSError, TypeError):
        source, first, where = [], 0, "source not available"
    out = [("head", ""), ("head", f"{cls.__qualname__}.forward  ({where})  modules: {paths}")]
    at_line: dict[int, list] = {}
    adds = set(add_locations(fn))
    for loc, lineno, col, text in add_locations(fn, calls=True):  # a helper's call only when it hosts a site
        if (loc, lineno, col, text) in adds or loc in group["sites"] or loc in group["skipped"]:
            at_line.setdefault(lineno, []).append((loc, col, text))
    for offset, line in enumerate(source):
        lineno = first + offset
        adds = at_line.get(lineno, [])
        mark = "→" if any(loc in group["sites"] for loc, _, _ in adds) else ("·" if adds else " ")
        out.append(("code", f"{lineno:5d} {mark} {line.rstrip()}"))
        for loc, col, text in adds:
            pad = " " * (8 + col)
            out.append(("site" if loc in group["sites"] else "skip", pad + "^" * len(text.splitlines()[0])))
            for spec in group["sites"].get(loc, []):
                where = f"add#{format_loc(spec.key[1])} → {spec.name}"
                info = f"{where}  chain {spec.chain}, pos {spec.position}, K={spec.window}"
                out.append(("site", f"{pad}{info}: {_after(spec, config)}"))
            for reason in dict.fromkeys(group["skipped"].get(loc, [])):
                out.append(("skip", f"{pad}add#{loc} not a site: {reason}"))
    return out


def show_rewrite(model) -> RewriteView:
    """Before/after view of a converted model: for each forward that holds additions (grouped by class),
    its original source with every addition marked: ``→`` an addition that became a site (its name, chain,
    position, K and what it computes now), ``·`` one left as it is (with `explain`'s reason)."""
    model = _converted(model)
    runtime = model.__dict__[RUNTIME]
    report, (groups, unplaced) = runtime.report, _group_adds(model, runtime)
    c = report.config
    window = f"streams={c.streams}" if c.streams > 1 else f"max_history={c.max_history}"
    title = f"mhc_fx rewrite of {report.model}: {len(report.sites)} sites in {len(report.chains)} chains"
    lines = [("head", f"{title} (mode={c.mode}, {window}); → now a site, · left as it is")]
    for cls, group in groups.items():
        lines += _forward_lines(cls, group, report.config)
    if unplaced:
        lines += [("head", ""), ("head", "other additions left as they are:")]
        lines += [("skip", f"  {s.where}: {s.reason}") for s in unplaced]
    return RewriteView(lines)


# -- what flows through the sites on a real forward --------------------------------------------------------------
@contextlib.contextmanager
def _recording(runtime):
    """Within the block, record each site mix of ``runtime`` as ``(spec, window of states, output)``:
    ``_mix_site`` is wrapped on this runtime instance only (no hot-path hook), and restored after."""
    records, saved, original = [], runtime.__dict__.get("_mix_site"), runtime._mix_site

    def mix_site(scope, site, training, a, b):
        out = original(scope, site, training, a, b)
        if site.streams:  # no window to record
            return out
        records.append((site, list(scope.histories[site.chain][-site.window :]), out))
        return out

    runtime._mix_site = mix_site
    try:
        yield records
    finally:
        runtime.__dict__.pop("_mix_site")
        if saved is not None:
            runtime._mix_site = saved


def history_contributions(model, *args, **kwargs) -> dict[str, list[float]]:
    """Per site, ``[‖α_k · s_k‖ for each history state s_k]`` (oldest first, Frobenius norm over the whole
    batch) on one forward ``model(*args, **kwargs)`` in eval mode without gradients (modes are restored);
    α as `mixing_weights` gives it."""
    model = _converted(model)
    alphas = _alphas(model)
    modes = {m: m.training for m in model.modules()}
    try:
        with _recording(model.__dict__[RUNTIME]) as records, torch.no_grad():
            model.eval()(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {
        site.name: [_norm(alphas[site.name][k].to(s.device) * s.float()) for k, s in enumerate(w)]
        for site, w, _ in records
    }


def _default_loss(output) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    if isinstance(output, torch.Tensor):
        return output.float().mean()
    raise TypeError(f"gradient_flow: pass loss_fn=... to turn the model's {type(output).__name__} into a loss")


def gradient_flow(model, *args, loss_fn=None, **kwargs) -> dict[str, dict]:
    """Per site, gradient norms ``{"logits": ‖∂L/∂θ‖, "output": ‖∂L/∂y‖, "states": [‖α_k ∂L/∂y‖, ...]}``.

    With inputs: one forward ``model(*args, **kwargs)`` in the model's current mode, then
    ``L = loss_fn(output)`` (default: ``output.loss`` if set, else ``output.mean()`` as the ``mhc`` package
    does); the gradients come from ``torch.autograd.grad``, so no ``.grad`` is touched. ``"states"`` is the
    gradient each history state receives through the site (α from `mixing_weights`; 0 for older states
    with ``detach_history``). Without inputs: reads the ``.grad`` a previous backward left on each site's
    logits; ``"output"`` and ``"states"`` are None. ``"logits"`` is None for sites without logits."""
    model = _converted(model)
    specs = list(model.__dict__[RUNTIME].sites.values())
    if not args and not kwargs:
        history = [s for s in specs if not s.streams]
        grad = {s.name: s.holder._parameters[s.attr].grad if s.holder is not None else None for s in history}
        return {n: {"logits": _norm(g), "output": None, "states": None} for n, g in grad.items()}
    with _recording(model.__dict__[RUNTIME]) as records:
        loss = (loss_fn or _default_loss)(model(*args, **kwargs))
    params = [s.holder._parameters[s.attr] for s, _, _ in records if s.holder is not None]
    params = [p for p in params if p.requires_grad]
    outputs = [out for _, _, out in records if out.requires_grad]
    grads = dict(zip(map(id, params + outputs), torch.autograd.grad(loss, params + outputs, allow_unused=True)))
    alphas, detach = _alphas(model), model.__dict__[RUNTIME].config.detach_history
    flow = {}
    for site, _, out in records:
        norm = _norm(grads.get(id(out))) or 0.0
        theta = grads.get(id(site.holder._parameters[site.attr])) if site.holder is not None else None
        states = [float(a) * norm for a in alphas[site.name].tolist()]
        if detach:
            states = [0.0] * (len(states) - 1) + states[-1:]
        flow[site.name] = {"logits": _norm(theta), "output": norm, "states": states}
    return flow


# -- a training-loop callback ---------------------------------------------------------------------------------------
class WeightLogger:
    """Logs α and its entropy per site while training; no framework needed::

        logger = mhc_fx.WeightLogger(model)           # the converted model (or its compiled wrapper)
        for step in range(steps):
            ...; optimizer.step(); logger.step()        # or logger.step(step)

    ``history``: one dict per logged step, ``{"step": n, "alpha": {site: [α, oldest first]},
    "entropy": {site: -Σ α log α}}``. ``every=k`` logs every k-th call of `step` only."""

    def __init__(self, model, every: int = 1) -> None:
        _converted(model)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.model, self.every = model, every
        self.history: list[dict] = []
        self._calls = 0

    def step(self, step: int | None = None) -> dict | None:
        """Record the current α (``step`` defaults to the number of earlier calls); returns the record, or
        None on a call that ``every`` skips."""
        self._calls += 1
        if (self._calls - 1) % self.every:
            return None
        alphas = _alphas(_converted(self.model))
        record = {
            "step": self._calls - 1 if step is None else step,
            "alpha": {name: a.float().cpu().tolist() for name, a in alphas.items()},
            "entropy": {name: _entropy(a) for name, a in alphas.items()},
        }
        self.history.append(record)
        return record

    def to_rows(self) -> list[dict]:
        """One flat dict per (step, site), e.g. for ``csv.DictWriter`` or ``pandas.DataFrame``:
        ``{"step", "site", "entropy", "alpha[t]", "alpha[t-1]", ...}`` (the latest state is ``t``)."""
        rows = []
        for rec in self.history:
            for name, alpha in rec["alpha"].items():
                row = {"step": rec["step"], "site": name, "entropy": rec["entropy"][name]}
                row.update({f"alpha[t-{k}]" if k else "alpha[t]": a for k, a in enumerate(reversed(alpha))})
                rows.append(row)
        return rows

    def plot_history(self, ax=None, *, value: str = "entropy"):
        """One line per site over the logged steps: ``value="entropy"`` (-Σ α log α) or ``"latest"`` (α of the
        latest state, 1 at the identity init). Returns the Figure."""
        if value not in ("entropy", "latest"):
            raise ValueError(f"value must be 'entropy' or 'latest', got {value!r}")
        if not self.history:
            raise ValueError("nothing to plot: call step() during training first")
        fig, ax = _axes(ax, (6.5, 3.5))
        steps = [rec["step"] for rec in self.history]
        for name in self.history[-1]["alpha"]:
            ys = [rec["entropy"][name] if value == "entropy" else rec["alpha"][name][-1] for rec in self.history]
            ax.plot(steps, ys, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("entropy of α (nats)" if value == "entropy" else "α of the latest state")
        ax.legend(fontsize=7, ncol=2)
        return fig
