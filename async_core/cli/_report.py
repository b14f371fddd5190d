"""The results of ``streambridge compare``: a text table and a self-contained HTML report.

The HTML has no external JS or CSS: charts are inline SVG drawn here (token
arrival timelines, TTFC and inter-chunk CDFs), so the file can be attached to a
ticket or opened offline.
"""

from __future__ import annotations

import html as _html
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from async_core.harness import percentile

if TYPE_CHECKING:
    from .compare import PathResult, Workload

COLORS = {"legacy-gthread": "#c2410c", "legacy-gevent": "#a16207", "async": "#1d4ed8",
          "hybrid": "#047857"}
# (key, header, format): the columns of the table, in order.
COLUMNS = [("ttfc50", "TTFC p50 ms", "{:.2f}"), ("ttfc99", "TTFC p99 ms", "{:.2f}"),
           ("gap50", "gap p50 ms", "{:.2f}"), ("gap99", "gap p99 ms", "{:.2f}"),
           ("chunks_s", "chunks/s", "{:.0f}"), ("cpu_ms", "CPU ms/stream", "{:.2f}"),
           ("rss_kb", "RSS KB/stream", "{:.0f}")]


def summary(result: PathResult) -> dict[str, float]:
    """The figures of one path: latency percentiles (ms), throughput, cost per stream."""
    ok = [s for s in result.samples if s.error is None]
    ttfc = [s.ttfc * 1e3 for s in ok if s.ttfc is not None]
    gaps = [g * 1e3 for s in ok for g in s.gaps()]
    streams = sum(c.streams for c in result.costs) or 1
    chunks = sum(len(s.arrivals) for s in result.samples)
    rss = [max(0, c.rss_peak - c.rss_baseline) / c.streams for c in result.costs]
    return {
        "streams": float(len(result.samples)),
        "errors": float(len(result.samples) - len(ok)),
        "ttfc50": percentile(ttfc, 0.5), "ttfc99": percentile(ttfc, 0.99),
        "gap50": percentile(gaps, 0.5), "gap99": percentile(gaps, 0.99),
        "chunks_s": chunks / result.batch_seconds if result.batch_seconds else math.nan,
        "cpu_ms": sum(c.cpu_seconds for c in result.costs) / streams * 1e3,
        "rss_kb": percentile(rss, 0.5) / 1024,
    }


def _fmt(fmt: str, value: float) -> str:
    return "–" if math.isnan(value) else fmt.format(value)


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "–"
    return f"{value / base:.2f}×"


def rows(results: Sequence[PathResult]) -> list[list[str]]:
    """Header and one row per path; each cell ``value (ratio to the first path)``."""
    sums = [summary(r) for r in results]
    head = ["path", "streams", "errors", *(h for _, h, _ in COLUMNS)]
    out = [head]
    for r, s in zip(results, sums, strict=True):
        cells = [r.path, f"{s['streams']:.0f}", f"{s['errors']:.0f}"]
        for key, _, fmt in COLUMNS:
            cell = _fmt(fmt, s[key])
            if r is not results[0]:
                cell += f" ({_ratio(s[key], sums[0][key])})"
            cells.append(cell)
        out.append(cells)
    return out


def table(results: Sequence[PathResult], workload: Workload) -> str:
    """The plain-text table printed by ``streambridge compare``."""
    data = rows(results)
    widths = [max(len(row[i]) for row in data) for i in range(len(data[0]))]
    lines = [_describe(workload), ""]
    for n, row in enumerate(data):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"(ratios in brackets: to {results[0].path}; lower is better except chunks/s)")
    return "\n".join(lines)


def _describe(w: Workload) -> str:
    pace = f"{w.interval_ms:g} ms between tokens" if w.interval_ms else "unpaced"
    return (f"workload: agent {w.agent}, {w.tokens} tokens/stream, {pace}, "
            f"{w.concurrency} concurrent streams/batch, interleaved rounds")


def _nice_ticks(hi: float, n: int = 5) -> list[float]:
    if hi <= 0 or math.isnan(hi):
        return [0.0]
    step = 10 ** math.floor(math.log10(hi / n))
    for m in (1, 2, 2.5, 5, 10):
        if hi / (step * m) <= n:
            step *= m
            break
    return [i * step for i in range(int(hi / step) + 1)]


def chart(title: str, xlabel: str, ylabel: str,
          series: Sequence[tuple[str, list[list[tuple[float, float]]]]],
          *, x_max: float | None = None, w: int = 620, h: int = 280) -> str:
    """An inline SVG line chart: ``series`` is ``(path, [polyline, ...])``."""
    pts = [p for _, lines in series for line in lines for p in line]
    xm = x_max or max((x for x, _ in pts), default=1.0) or 1.0
    ym = max((y for _, y in pts), default=1.0) or 1.0
    left, bottom, top, right = 56, 40, 28, 12
    pw, ph = w - left - right, h - top - bottom

    def sx(x: float) -> float:
        return left + min(x, xm) / xm * pw

    def sy(y: float) -> float:
        return top + ph - y / ym * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
           f'height="{h}" role="img"><title>{_html.escape(title)}</title>',
           f'<text x="{left}" y="16" class="t">{_html.escape(title)}</text>']
    for t in _nice_ticks(xm):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + ph}" '
                   f'class="g"/><text x="{sx(t):.1f}" y="{top + ph + 14}" class="a" '
                   f'text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(ym):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
                   f'class="g"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" class="a" '
                   f'text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 6}" class="a" text-anchor="middle">'
               f'{_html.escape(xlabel)}</text><text x="12" y="{top + ph / 2}" class="a" '
               f'transform="rotate(-90 12 {top + ph / 2})" text-anchor="middle">'
               f'{_html.escape(ylabel)}</text>')
    for i, (name, lines) in enumerate(series):
        color = COLORS.get(name, "#555")
        opacity = 0.9 if len(lines) == 1 else max(0.15, 1.5 / len(lines))
        for line in lines:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" '
                       f'stroke-width="1.6" stroke-opacity="{opacity:.2f}"/>')
        # Legend bottom right: timelines and CDFs both leave that corner empty.
        ly = top + ph - 16 * (len(series) - i)
        out.append(f'<rect x="{left + pw - 110}" y="{ly}" width="10" height="10" '
                   f'fill="{color}"/><text x="{left + pw - 95}" y="{ly + 9}" '
                   f'class="a">{_html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _cdf(values: list[float]) -> list[tuple[float, float]]:
    ordered = sorted(values)
    n = len(ordered)
    return [(v, (i + 1) / n * 100) for i, v in enumerate(ordered)]


def html(results: Sequence[PathResult], workload: Workload, max_lines: int = 12) -> str:
    """A self-contained HTML report: the table, timelines and latency distributions."""
    Series = list[tuple[str, list[list[tuple[float, float]]]]]
    timelines: Series = []
    ttfcs: Series = []
    gaps: Series = []
    for r in results:
        ok = [s for s in r.samples if s.error is None and s.arrivals]
        timelines.append((r.path, [[(t * 1e3, n) for n, t in enumerate(s.arrivals, 1)]
                                   for s in ok[-max_lines:]]))
        ttfcs.append((r.path, [_cdf([s.ttfc * 1e3 for s in ok if s.ttfc is not None])]))
        gaps.append((r.path, [_cdf([g * 1e3 for s in ok for g in s.gaps()])]))
    gap_cap = max((percentile([x for x, _ in line], 0.995) for _, ls in gaps for line in ls
                   if line), default=1.0)
    data = rows(results)
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in data[0])
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in data[1:])
    charts = [
        chart(f"Token arrival: the last {max_lines} streams of each path", "ms since request",
              "chunks received", timelines),
        chart("Time to first chunk (CDF)", "ms", "% of streams", ttfcs),
        chart("Inter-chunk gap (CDF, to p99.5)", "ms", "% of gaps", gaps, x_max=gap_cap),
    ]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>streambridge compare</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1300px}}
table{{border-collapse:collapse;margin:12px 0}}td,th{{border:1px solid #e4e7ec;padding:4px 9px;
text-align:right}}td:first-child,th:first-child{{text-align:left}}th{{background:#f8f9fb}}
.charts{{display:flex;flex-wrap:wrap;gap:18px}}svg{{background:#fff;border:1px solid #e4e7ec;
border-radius:8px}}.g{{stroke:#eef0f3}}.a{{font-size:11px;fill:#667085}}
.t{{font-size:13px;font-weight:600;fill:#1d2330}}</style></head><body>
<h1>streambridge compare</h1>
<p>{_html.escape(_describe(workload))}. Generated {time.strftime("%Y-%m-%d %H:%M:%S")}.
Times are measured by the client from sending the request to each delta's arrival;
CPU and RSS are the server's whole process tree. Ratios are to
<b>{_html.escape(results[0].path)}</b>.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<div class="charts">{"".join(charts)}</div></body></html>
"""
