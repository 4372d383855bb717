"""A picture of the verdict: did the limits hold? One self-contained SVG file, no dependency.

One row per caller, route and policy. The line is how many requests were admitted in the window
ending at each admission (what the verdict counts), against the quota (dashed) and the most the
verdict accepts (dotted, when the algorithm's slack or a tolerance allows more). Windows that
admitted more are marked red (`class="overshoot"`); the ticks under the line are the refused
requests (429). The verdict's failures are listed on top.
"""

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported as `verdict` beside the locustfile, `loadtests.verdict` in tests
    from loadtests.verdict import Windows

WIDTH, LEFT, RIGHT = 960, 230, 20
ROW, PLOT, TOP_GAP = 96, 64, 18
MAX_LISTED = 12  # failures listed on top; the table printed by locust has every one


def render(windows: Sequence["Windows"], failures: Sequence[str]) -> str:
    """The SVG document for these windows (Verdict.windows()) and failures (Verdict.failures())."""
    times = [t for w in windows for t in (*w.ends, *w.refused)]
    start, end = (min(times), max(times)) if times else (0.0, 1.0)
    span = max(end - start, 1.0)
    listed = list(failures[:MAX_LISTED])
    if len(failures) > MAX_LISTED:
        listed.append(f"... and {len(failures) - MAX_LISTED} more (see the printed table)")
    header = 50 + 16 * len(listed)
    height = header + ROW * max(len(windows), 1) + 24
    verdict = "PASS: the limits held" if not failures else "FAIL: the limits did not hold"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        "<title>Load test verdict</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold" '
        f'fill="{"#1a7f37" if not failures else "#cf222e"}">{verdict}</text>',
        f'<text x="10" y="40" fill="#57606a">Line: admitted in the window ending there; '
        "dashed: the quota; dotted: the most the verdict accepts; ticks: refused (429). "
        f"Time: 0 to {span:.0f} s of the run.</text>",
    ]
    for n, failure in enumerate(listed):
        parts.append(f'<text x="10" y="{58 + 16 * n}" fill="#cf222e">{escape(failure)}</text>')
    for n, series in enumerate(windows):
        parts.extend(_row(series, header + ROW * n, start, span))
    if not windows:
        parts.append(f'<text x="10" y="{header + 20}">no rate-limited request was recorded</text>')
    bottom = header + ROW * max(len(windows), 1) + 14
    parts.append(f'<text x="{LEFT}" y="{bottom}" fill="#57606a">0 s</text>')
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{bottom}" text-anchor="end" fill="#57606a">'
        f"{span:.0f} s</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _row(series: "Windows", top: float, start: float, span: float) -> list[str]:
    policy = series.policy
    plot_width = WIDTH - LEFT - RIGHT
    y_max = max([*series.counts, series.most, policy.quota, 1]) * 1.15
    base = top + TOP_GAP + PLOT

    def x(at: float) -> float:
        return LEFT + (at - start) / span * plot_width

    def y(count: float) -> float:
        return base - count / y_max * PLOT

    peak = max(series.counts, default=0)
    over = [(t, c) for t, c in zip(series.ends, series.counts, strict=True) if c > series.most]
    label = f"{policy.name}: {policy.quota}/{policy.window}s, refused {len(series.refused)}"
    peak_text = f"OVERSHOOT: peak {peak}" if over else f"peak {peak}"
    peak_style = ' fill="#cf222e" font-weight="bold"' if over else ""
    parts = [
        f'<g class="series{" overshot" if over else ""}">',
        f'<rect x="{LEFT}" y="{top + TOP_GAP}" width="{plot_width}" height="{PLOT}" '
        f'fill="{"#ffebe9" if over else "#f6f8fa"}"/>',
        f'<text x="10" y="{top + TOP_GAP + 14}" font-weight="bold">{escape(series.caller)}</text>',
        f'<text x="10" y="{top + TOP_GAP + 30}">{escape(series.route)}</text>',
        f'<text x="10" y="{top + TOP_GAP + 46}">{escape(label)}</text>',
        f'<text x="10" y="{top + TOP_GAP + 62}"{peak_style}>{peak_text}</text>',
        _hline(LEFT, LEFT + plot_width, y(policy.quota), "#24292f", "6 4"),
    ]
    if series.most != policy.quota:
        parts.append(_hline(LEFT, LEFT + plot_width, y(series.most), "#57606a", "2 3"))
    if series.ends:
        points = " ".join(
            f"{x(t):.1f},{y(c):.1f}" for t, c in zip(series.ends, series.counts, strict=True)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="#0969da" stroke-width="1.5"/>'
        )
    for at, count in over:
        parts.append(
            f'<circle class="overshoot" cx="{x(at):.1f}" cy="{y(count):.1f}" r="3" fill="#cf222e"/>'
        )
    for at in series.refused:
        parts.append(
            f'<line class="refused" x1="{x(at):.1f}" y1="{base}" x2="{x(at):.1f}" '
            f'y2="{base - 8}" stroke="#bc4c00"/>'
        )
    parts.append("</g>")
    return parts


def _hline(x1: float, x2: float, at: float, colour: str, dashes: str) -> str:
    return (
        f'<line x1="{x1}" y1="{at:.1f}" x2="{x2}" y2="{at:.1f}" stroke="{colour}" '
        f'stroke-dasharray="{dashes}"/>'
    )
