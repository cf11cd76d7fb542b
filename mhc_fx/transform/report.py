"""The report `explain` returns: which additions became sites, which were skipped and why."""

from __future__ import annotations

import dataclasses
import html

from ..config import MHCConfig


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """One converted addition."""

    name: str  # also the parameter's name under ``mhc.``
    module_path: str  # the module whose forward holds the addition ("" for the root)
    chain: int
    position: int  # 1-based position in its chain
    history: int  # K = min(position, max_history)
    shape: tuple | None
    mode: str
    streams: int = 1  # n when the site's chain carries n parallel streams


@dataclasses.dataclass(frozen=True)
class SkippedInfo:
    """One addition that was not converted."""

    where: str
    reason: str


@dataclasses.dataclass
class Report:
    """What `convert` did (or would do) to a model.

    Attributes:
        model: the model's class name.
        capture: how the graph was captured for analysis (``"fx"`` or ``"export"``).
        config: the options of the conversion.
        sites: the converted additions, in execution order.
        skipped: the additions left as they are, each with its reason.
        notes: what the converted model keeps or loses (e.g. limits of a path).
    """

    model: str
    capture: str
    config: MHCConfig
    sites: list[SiteInfo]
    skipped: list[SkippedInfo]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def chains(self) -> dict[int, list[SiteInfo]]:
        """Sites grouped by chain id."""
        out: dict[int, list[SiteInfo]] = {}
        for site in self.sites:
            out.setdefault(site.chain, []).append(site)
        return out

    @property
    def warning(self) -> str | None:
        """Why nothing mixes, when a conversion in ``hc`` / ``mhc`` mode gives no site a window of
        two or more states (every chain of length one): the model then trains exactly as before."""
        if not self.config.site_mode.learns or any(s.history >= 2 for s in self.sites):
            return None
        if not self.sites:
            return f"mhc_fx: no residual site found in {self.model}: the model is returned unchanged" + (
                f" ({_reasons(self.skipped)})" if self.skipped else ""
            )
        return (
            f"mhc_fx: none of the {len(self.sites)} sites of {self.model} mixes anything: every chain holds a "
            "single site, so the converted model has no mixing weights and trains exactly like the original. "
            "Chains end at projection shortcuts, where an op with parameters changes the stream between two "
            "residual adds, and where an add is skipped"
            + (f"; skipped additions: {_reasons(self.skipped)}" if self.skipped else "")
            + ". mhc_fx.explain(model) lists the sites and chains"
        )

    def _site_head(self) -> list[str]:
        return ["site", "module", "chain", "pos", "K", "shape"] + (["streams"] if self.config.streams > 1 else [])

    def _site_rows(self) -> list[list[str]]:
        rows = []
        for s in self.sites:
            carries = s.streams > 1  # K is "-" where the chain carries streams instead of a window
            row = [s.name, s.module_path or "(root)", str(s.chain), str(s.position), "-" if carries else str(s.history)]
            row.append(_shape(s.shape))
            if self.config.streams > 1:
                row.append(str(s.streams) if carries else "-")
            rows.append(row)
        return rows

    def __str__(self) -> str:
        c = self.config
        lines = [
            f"mhc_fx report for {self.model}: {len(self.sites)} sites in {len(self.chains)} chains, "
            f"{len(self.skipped)} additions skipped "
            f"(mode={c.mode}, "
            + (f"streams={c.streams}" if c.streams > 1 else f"max_history={c.max_history}")
            + f", capture={self.capture})"
        ]
        if self.warning is not None:
            lines.append("WARNING: " + self.warning.removeprefix("mhc_fx: "))
        if self.sites:
            lines.append(_table(self._site_head(), self._site_rows()))
        if self.skipped:
            lines.append("skipped:")
            lines.append(_table(["where", "reason"], [[s.where, s.reason] for s in self.skipped]))
        if not self.sites and self.warning is None:
            lines.append("no residual site found: the model is returned unchanged")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<mhc_fx.Report {self.model}: {len(self.sites)} sites, {len(self.skipped)} skipped>"

    def _repr_html_(self) -> str:
        def table(head, rows):
            th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
            return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

        parts = [f"<p><b>{html.escape(self.model)}</b>: {len(self.sites)} sites, {len(self.skipped)} skipped</p>"]
        if self.warning is not None:
            parts.append(f"<p><b>warning</b>: {html.escape(self.warning)}</p>")
        if self.sites:
            parts.append(table(self._site_head(), self._site_rows()))
        if self.skipped:
            parts.append(table(["where", "reason"], [[s.where, s.reason] for s in self.skipped]))
        parts.extend(f"<p>note: {html.escape(n)}</p>" for n in self.notes)
        return "\n".join(parts)


def _reasons(skipped: list[SkippedInfo]) -> str:
    """``"3 x reason, 1 x other"``: the skipped additions counted by reason."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return ", ".join(f"{n} x {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _shape(shape: tuple | None) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])
