"""Charts drawn on the server as SVG text (no script, no library): the lineage graph of a
job and usage per project over time. Every name is escaped; colours are attributes, so the
page's Content-Security-Policy (no inline style) does not hide them."""

from __future__ import annotations

import time
import urllib.parse
from collections import defaultdict
from html import escape

from c3fs.fsutil import human
from c3fs.web.catalog import KIND_DIR, Graph, GraphNode, Series

STATUS_FILL = {"SUCCEEDED": "#d9f2dd", "FAILED": "#f8d7d7", "TIMEOUT": "#fde7c7",
               "CANCELED": "#e4e4e4"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 200, 46, 70, 18, 20


def lineage_svg(graph: Graph) -> str:
    columns: dict[int, list[GraphNode]] = defaultdict(list)
    for node in graph.nodes.values():
        columns[node.column].append(node)
    first = min(columns)
    where: dict[tuple[str, str], tuple[int, int]] = {}
    for column, nodes in columns.items():
        for row, node in enumerate(nodes):
            where[node.ref] = (PAD + (column - first) * (BOX_W + GAP_X),
                               PAD + row * (BOX_H + GAP_Y))
    width = 2 * PAD + len(columns) * (BOX_W + GAP_X) - GAP_X
    height = 2 * PAD + max(len(n) for n in columns.values()) * (BOX_H + GAP_Y) - GAP_Y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="lineage graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
             '</marker></defs>']
    for source, target in sorted(graph.edges):
        (x1, y1), (x2, y2) = where[source], where[target]
        x1, y1, y2 = x1 + BOX_W, y1 + BOX_H // 2, y2 + BOX_H // 2
        mid = (x1 + x2) // 2
        parts.append(f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
                     'fill="none" stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>')
    parts += [_box(node, *where[node.ref]) for node in graph.nodes.values()]
    parts.append("</svg>")
    return "".join(parts)


def _box(node: GraphNode, x: int, y: int) -> str:
    record = node.record
    fill = STATUS_FILL.get(record.status, "#fff") if record else "#fff"
    dash = "" if record else ' stroke-dasharray="4 3"'
    stroke_width = 3 if node.column == 0 else 1
    status = (record.status + (f" ({record.reason})" if record.reason else "")) if record \
        else "not in the store"
    label = node.label if len(node.label) <= 26 else node.label[:25] + "…"
    box = (f'<g class="node" data-ref="{escape(node.ref[1])}">'
           f'<title>{escape(node.ref[0])} {escape(node.ref[1])}: {escape(status)}</title>'
           f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
           f'stroke="#333" stroke-width="{stroke_width}"{dash}/>'
           f'<text x="{x + 10}" y="{y + 19}" font-size="13" font-family="monospace">'
           f'{escape(label)}</text>'
           f'<text x="{x + 10}" y="{y + 36}" font-size="11" fill="#444">{escape(status)}</text>'
           "</g>")
    if record is None:
        return box
    href = f"/lineage/{KIND_DIR[record.kind]}/{urllib.parse.quote(record.id, safe='')}"
    return f'<a href="{escape(href)}">{box}</a>'


# usage over time ----------------------------------------------------------------------------
CHART_W, CHART_H, LEFT, BOTTOM, TOP, RIGHT = 760, 320, 80, 40, 16, 170


def usage_svg(series: list[Series]) -> str:
    points = [p for s in series for p in s.points]
    if not points:
        return ""
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    top = max(max(p[1] for p in points), 1)
    span = max(t1 - t0, 1.0)
    plot_w, plot_h = CHART_W - LEFT - RIGHT, CHART_H - TOP - BOTTOM

    def xy(t: float, v: int) -> str:
        return f"{LEFT + (t - t0) / span * plot_w:.1f},{TOP + plot_h - v / top * plot_h:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="usage" width="{CHART_W}" '
             f'height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
             'aria-label="usage per project over time">']
    parts += _axes(t0, span, top, plot_w, plot_h)
    for i, item in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        steps = [item.points[0]] + [q for p, q in zip(item.points, item.points[1:], strict=False)
                                    for q in ((q[0], p[1]), q)]
        steps.append((t0 + span, item.points[-1][1]))  # to the right edge: usage stays
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(xy(t, v) for t, v in steps)}">'
                     f'<title>{escape(item.project)}</title></polyline>')
        y = TOP + 14 + i * 18
        parts.append(f'<rect x="{CHART_W - RIGHT + 14}" y="{y - 9}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{CHART_W - RIGHT + 30}" y="{y}" '
                     f'font-size="12">{escape(_short(item.project))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axes(t0: float, span: float, top: int, plot_w: int, plot_h: int) -> list[str]:
    parts = [f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
             'stroke="#333"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#333"/>']
    for i in range(5):
        y = TOP + plot_h - i * plot_h / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{escape(human(top * i / 4))}</text>')
    for i in range(4):
        t = t0 + span * i / 3
        x = LEFT + plot_w * i / 3
        label = time.strftime("%Y-%m-%d %H:%M", time.localtime(t))
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 18}" font-size="11" '
                     f'text-anchor="middle">{label}</text>')
    return parts


def _short(text: str) -> str:
    return text if len(text) <= 20 else text[:19] + "…"
