"""The scaling curves' report (``bench/curves --json``) as Markdown tables, growth fits and
matplotlib plots. Everything here reads the report dictionary only, so ``--replot`` renders an
earlier run again."""

from __future__ import annotations

import math
import os
import statistics

#: how a curve's x is named and the unit its growth is given in (x per unit)
CURVE_UNITS = {
    "files": ("files", 1000, "1k files"),
    "steps": ("steps", 1, "step"),
    "concurrency": ("builds at once", 1, "build"),
}
RATIO_ENGINES = ("pybk", "pybkd")
DAEMON_OF = {"pybkd": "pybkd", "buildkit": "dockerd"}
#: the same colour for an engine (and its daemon) in every plot
COLOURS = {"pybk": "C0", "pybkd": "C1", "buildkit": "C2", "dockerd": "C2"}


def growth(xs: list[float], ys: list[float | None]) -> dict | None:
    """How ``ys`` grows with ``xs``: the least-squares line ``y = intercept + slope * x``, the
    slope of every segment between neighbouring points, and the log-log exponent (least
    squares of log y on log x: 1 is linear, 2 quadratic; a large constant part pulls it below
    1, so the segment slopes are what shows growth worse than linear: they rise). None with
    fewer than two measured points."""
    points = sorted((x, y) for x, y in zip(xs, ys, strict=True) if y is not None)
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    segments = [(x1, x2, (y2 - y1) / (x2 - x1))
                for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False)]
    exponent = None
    if all(x > 0 and y > 0 for x, y in points):
        lx = [math.log(x) for x, _ in points]
        ly = [math.log(y) for _, y in points]
        mlx, mly = statistics.fmean(lx), statistics.fmean(ly)
        exponent = (sum((a - mlx) * (b - mly) for a, b in zip(lx, ly, strict=True))
                    / sum((a - mlx) ** 2 for a in lx))
    return {"intercept": mean_y - slope * mean_x, "slope": slope, "segments": segments,
            "exponent": exponent}


def growth_report(report: dict) -> dict:
    """{curve: {engine: {phase: growth}}} of the medians, slopes per the curve's unit."""
    out: dict = {}
    for curve, cells in report.get("curves", {}).items():
        _, per, _ = CURVE_UNITS[curve]
        by_key: dict[tuple, dict[int, float | None]] = {}
        for cell in cells:
            by_key.setdefault((cell["engine"], cell["phase"]), {})[cell["x"]] = cell["median"]
        for (engine, phase), values in by_key.items():
            fit = growth(list(values), list(values.values()))
            if fit is None:
                continue
            fit["slope"] *= per
            fit["segments"] = [(a, b, s * per) for a, b, s in fit["segments"]]
            out.setdefault(curve, {}).setdefault(engine, {})[phase] = fit
    return out


class Notes:
    """Footnotes of a table: the same text gets the same number."""

    def __init__(self):
        self.texts: dict[str, int] = {}

    def mark(self, text: str) -> str:
        self.texts.setdefault(text, len(self.texts) + 1)
        return f"[{self.texts[text]}]"

    def lines(self) -> list[str]:
        return [f"[{n}] {text}" for text, n in self.texts.items()]


def cell_text(cell: dict | None, label: str, notes: Notes, key: str = "median") -> str:
    if cell is None:
        return "–"
    if cell.get("not_applicable"):
        return "n/a " + notes.mark(f"{label}: {cell['not_applicable']}")
    if cell.get("failure") and cell.get(key) is None:
        return "failed " + notes.mark(f"{label}: {cell['failure']}")
    if cell.get(key) is None:
        return "–"
    text = f"{cell[key]:.2f}"
    if cell.get("failure"):
        text += " " + notes.mark(f"{label}: {cell['failure']}")
    return text


def memory_text(cell: dict | None) -> str:
    memory = (cell or {}).get("memory")
    if not memory:
        return "–"
    return f"{memory['rss_mib']:.0f} / {memory['pss_mib']:.0f}"


def ratio(mine: dict | None, theirs: dict | None, key: str = "median") -> str:
    if mine and theirs and mine.get(key) is not None and theirs.get(key):
        return f"{mine[key] / theirs[key]:.2f}"
    return "–"


def _index(cells: list[dict]) -> dict[tuple, dict]:
    return {(c["x"], c["phase"], c["engine"]): c for c in cells}


def _phases(cells: list[dict]) -> list[str]:
    return list(dict.fromkeys(c["phase"] for c in cells))


def _row(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def curve_table(report: dict, curve: str) -> str:
    """Median seconds per engine and point, the ratios to BuildKit, and the daemons' peak
    tree memory during the cell (RSS / PSS, MiB)."""
    cells = report["curves"][curve]
    present = {c["engine"] for c in cells}
    names = [e["name"] for e in report["engines"] if e["name"] in present]
    labels = {e["name"]: e["label"] for e in report["engines"]}
    index = _index(cells)
    notes = Notes()
    ratios = [n for n in names if n in RATIO_ENGINES] if "buildkit" in names else []
    daemons = [n for n in names if n in DAEMON_OF]
    xname = CURVE_UNITS[curve][0]
    if curve == "concurrency":
        header = [xname, "run"]
        for name in names:
            header += [f"{labels[name]} batch", f"{labels[name]} per build"]
        header += [f"{labels[n]} / BuildKit (batch)" for n in ratios]
    else:
        header = [xname, "run", *(labels[n] for n in names)]
        header += [f"{labels[n]} / BuildKit" for n in ratios]
    header += [f"{DAEMON_OF[n]} peak MiB, RSS / PSS" for n in daemons]
    lines = [_row(header), "|" + "---|" * len(header)]
    for x in sorted({c["x"] for c in cells}):
        for phase in _phases(cells):
            row = [f"{x:,}", phase]
            for name in names:
                cell = index.get((x, phase, name))
                row.append(cell_text(cell, labels[name], notes))
                if curve == "concurrency":
                    row.append(cell_text(cell, labels[name], notes, "build_median"))
            row += [ratio(index.get((x, phase, n)), index.get((x, phase, "buildkit")))
                    for n in ratios]
            row += [memory_text(index.get((x, phase, n))) for n in daemons]
            lines.append(_row(row))
    lines += ["", *notes.lines()] if notes.texts else []
    return "\n".join(lines)


def growth_lines(report: dict) -> list[str]:
    labels = {e["name"]: e["label"] for e in report["engines"]}
    lines = []
    for curve, engines in report.get("growth", {}).items():
        unit = CURVE_UNITS[curve][2]
        for engine, phases in engines.items():
            for phase, fit in phases.items():
                segments = ", ".join(f"{a:,}→{b:,}: {s:+.3f}" for a, b, s in fit["segments"])
                exponent = ("–" if fit["exponent"] is None else f"{fit['exponent']:.2f}")
                lines.append(f"- {curve} {phase}, {labels.get(engine, engine)}: "
                             f"{fit['intercept']:.2f} s {fit['slope']:+.3f} s per {unit} "
                             f"(per segment: {segments}; log-log exponent {exponent})")
    return lines


def memory_table(report: dict) -> str:
    memory = report.get("memory", {})
    if not memory:
        return ""
    levels = sorted({int(k) for m in memory.values() for k in m["concurrent"]})
    header = ["daemon tree", "peak RSS", "peak PSS", "root VmHWM", "largest process"]
    header += [f"peak RSS / PSS, {n} at once" for n in levels]
    header += ["idle after a warm build, RSS / PSS (first → last)"]
    lines = [_row(header), "|" + "---|" * len(header)]
    for daemon, m in memory.items():
        row = [daemon, f"{m['peak_rss_mib']:.0f}", f"{m['peak_pss_mib']:.0f}",
               f"{m['root_hwm_mib']:.0f}", f"{m['largest_process_mib']:.0f}"]
        for n in levels:
            c = m["concurrent"].get(str(n))
            row.append(f"{c['rss_mib']:.0f} / {c['pss_mib']:.0f}" if c else "–")
        idle = m["idle"]
        if idle:
            first, last = idle[0], idle[-1]
            row.append(f"{first['rss_mib']:.0f} / {first['pss_mib']:.0f} → "
                       f"{last['rss_mib']:.0f} / {last['pss_mib']:.0f} "
                       f"({len(idle)} samples, {last['procs']} processes)")
        else:
            row.append("–")
        lines.append(_row(row))
    return "\n".join(lines)


def render(report: dict) -> str:
    titles = {"files": "Context size: COPY of N small files (median seconds)",
              "steps": "Step count: N COPY/RUN steps (median seconds)",
              "concurrency": "Builds at once on one daemon (median seconds: the batch's wall "
                             "time, and the median single build)"}
    parts = []
    for curve in report.get("curves", {}):
        parts += [f"### {titles[curve]}", "", curve_table(report, curve), ""]
    lines = growth_lines(report)
    if lines:
        parts += ["### Growth (least-squares line over the medians)", "", *lines, ""]
    table = memory_table(report)
    if table:
        parts += ["### Memory of the daemons' process trees (MiB)", "", table, ""]
    parts.append("; ".join(f"{k}: {v}" for k, v in report.get("versions", {}).items()))
    return "\n".join(parts)


def plot(report: dict, directory: str, log=print) -> list[str]:
    """One PNG per curve (files.png log-log, steps.png, concurrency.png) and memory.png;
    return the paths written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib): no plots")
        return []
    os.makedirs(directory, exist_ok=True)
    labels = {e["name"]: e["label"] for e in report["engines"]}
    written = []
    for curve, cells in report.get("curves", {}).items():
        phases = _phases(cells)
        fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 4), squeeze=False)
        for ax, phase in zip(axes[0], phases, strict=True):
            for engine in dict.fromkeys(c["engine"] for c in cells):
                points = sorted((c["x"], c["median"]) for c in cells
                                if c["engine"] == engine and c["phase"] == phase
                                and c["median"] is not None)
                if not points:
                    continue
                line, = ax.plot(*zip(*points, strict=True), marker="o",
                                label=labels.get(engine, engine), color=COLOURS.get(engine))
                if curve == "concurrency":
                    builds = sorted((c["x"], c["build_median"]) for c in cells
                                    if c["engine"] == engine and c["phase"] == phase
                                    and c.get("build_median") is not None)
                    if builds:
                        ax.plot(*zip(*builds, strict=True), marker="x", linestyle="--",
                                color=line.get_color(),
                                label=f"{labels.get(engine, engine)} (per build)")
            if curve == "files":
                ax.set_xscale("log")
                ax.set_yscale("log")
                _linear_guide(ax, cells, phase)
            else:
                ax.set_ylim(bottom=0)
                ax.set_xticks(sorted({c["x"] for c in cells}))
            ax.set_xlabel(CURVE_UNITS[curve][0] + (" (log)" if curve == "files" else ""))
            ax.set_ylabel("median seconds" + (" (log)" if curve == "files" else ""))
            ax.set_title(phase)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle({"files": "COPY of N small files",
                      "steps": "N small steps (stages of ≤ 100)",
                      "concurrency": "builds at once on one daemon: batch and per build"}[curve])
        fig.tight_layout()
        path = os.path.join(directory, f"{curve}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    memory = report.get("memory", {})
    if memory:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        for i, (name, start, end) in enumerate(report.get("spans", [])):
            left.axvspan(start, end, color="grey", alpha=0.08 if i % 2 else 0.16, linewidth=0)
            left.text((start + end) / 2, 0.01, name, transform=left.get_xaxis_transform(),
                      rotation=90, fontsize=6, ha="center", va="bottom", color="dimgrey")
        for daemon, m in memory.items():
            if m["series"]:
                t, rss, pss = zip(*((s[0], s[1], s[2]) for s in m["series"]), strict=True)
                line, = left.plot(t, rss, label=f"{daemon} RSS", linewidth=0.8,
                                  color=COLOURS.get(daemon))
                left.plot(t, pss, label=f"{daemon} PSS", linewidth=0.8, linestyle="--",
                          color=line.get_color())
            levels = sorted((int(k), v) for k, v in m["concurrent"].items())
            if levels:
                line, = right.plot([n for n, _ in levels], [v["rss_mib"] for _, v in levels],
                                   marker="o", label=f"{daemon} peak RSS",
                                   color=COLOURS.get(daemon))
                right.set_xticks([n for n, _ in levels])
                right.plot([n for n, _ in levels], [v["pss_mib"] for _, v in levels],
                           marker="x", linestyle="--", color=line.get_color(),
                           label=f"{daemon} peak PSS")
        left.set_xlabel("seconds into the run (largest sample per second)")
        left.set_ylabel("process tree MiB")
        left.set_title("daemon memory over the run")
        right.set_xlabel("builds at once")
        right.set_ylabel("peak process tree MiB")
        right.set_title("peak memory vs builds at once")
        for ax in (left, right):
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(directory, "memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for path in written:
        log(f"plot written to {path}")
    return written


def _linear_guide(ax, cells: list[dict], phase: str) -> None:
    """A dotted line of slope 1 (time proportional to files) through BuildKit's (else the
    first engine's) largest point: a curve steeper than it grows worse than linearly."""
    for engine in ["buildkit", *dict.fromkeys(c["engine"] for c in cells)]:
        points = sorted((c["x"], c["median"]) for c in cells
                        if c["engine"] == engine and c["phase"] == phase and c["median"])
        if len(points) >= 2:
            (x0, _), (x1, y1) = points[0], points[-1]
            ax.plot([x0, x1], [y1 * x0 / x1, y1], linestyle=":", color="grey",
                    label="∝ files")
            return
