"""Inline SVG charts rendered on the server (no JavaScript library). Output is markup built only from
numbers and escaped labels."""
from __future__ import annotations

from markupsafe import Markup, escape


def compliance_line(points, *, width: int = 520, height: int = 140, title: str = "") -> Markup:
    """A line of percent compliant per day; days without data leave a gap."""
    pad_l, pad_r, pad_t, pad_b = 34, 8, 10, 22
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(1, len(points) - 1)

    def xy(i, pct):
        return pad_l + inner_w * i / n, pad_t + inner_h * (1 - pct / 100)

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for pct in (0, 50, 100):
        _, y = xy(0, pct)
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#667085">{pct}%</text>')
    segment: list[str] = []
    segments = []
    for i, (_, pct) in enumerate(points):
        if pct is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        x, y = xy(i, pct)
        segment.append(f"{x:.1f},{y:.1f}")
    if segment:
        segments.append(segment)
    for seg in segments:
        if len(seg) == 1:
            x, y = seg[0].split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#16a34a"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="#16a34a" stroke-width="2" points="{" ".join(seg)}"/>')
    if points:
        for i in (0, len(points) - 1):
            x, _ = xy(i, 0)
            label = points[i][0].strftime("%b %d")
            anchor = "start" if i == 0 else "end"
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="{anchor}" '
                         f'fill="#667085">{label}</text>')
    last = next((p for _, p in reversed(points) if p is not None), None)
    if last is None:
        parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" font-size="12" text-anchor="middle" '
                     f'fill="#667085">No results yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
