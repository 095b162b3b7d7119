#!/usr/bin/env python3
"""Draws one Jaeger trace as an SVG resembling Jaeger's trace timeline: the demo app's
`publish-batch` span with the `sendmmsg` child span the sidecar made for it, where a message failed.

  trace_picture.py --json FILE [--out FILE.svg]
  trace_picture.py --jaeger URL --service NAME [--out FILE.svg]

The input is what Jaeger's query API answers to GET /api/traces?service=NAME ({"data": [trace, ...]}).
Of those traces it draws the newest (by start time) in which a `publish-batch` span has a `sendmmsg`
child with otel.status_code=ERROR, and exits 1 if there is none. The picture is made from the API
rather than a screenshot because this Jaeger is built from Go modules and carries no UI. Standard
library only; the same JSON always gives the same bytes, so a committed picture only changes when
its trace does. scripts/trace-picture.sh runs it against the local demo stack.
"""

import argparse
import datetime
import html
import json
import math
import re
import sys
import urllib.parse
import urllib.request

PARENT_OP, CHILD_OP = "publish-batch", "sendmmsg"

WIDTH = 960
LABELS_X, LABELS_W = 20, 280  # the service & operation column
TL_X0, TL_X1 = 310, 870  # the timeline; past TL_X1 there is room for the last bar's duration
ROW_H, LINE_H = 34, 17
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CALM, ERROR, TEXT, MUTED, GRID = "#4e79a7", "#d64541", "#1f2933", "#616e7c", "#e4e7eb"

# What the details block under a span shows, in this order, for the keys the span has: what the
# sidecar records about the call, and why a span failed.
DETAIL_KEYS = ["sendmmsg.vlen", "sendmmsg.sent", "sendmmsg.messages.attempted", "sendmmsg.messages.failed",
               "error.type", "otel.status_description"]

# Characters XML 1.0 cannot carry even escaped (controls, lone surrogates, U+FFFE/U+FFFF): span
# names and tags come from whatever the traced process set.
NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def fail(message):
    print(f"trace_picture: {message}", file=sys.stderr)
    sys.exit(1)


def esc(value, limit=None):
    """Text from the trace, cut to `limit` characters and made safe inside XML text or attributes."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = NOT_XML.sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def num(value):
    """A microsecond count from the trace; anything else (hostile or missing) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value)


def fmt_us(us):
    """A duration the way Jaeger writes it: 104µs, 1.25ms, 2.5s."""
    for unit, size in (("s", 1e6), ("ms", 1e3)):
        if us >= size:
            return f"{us / size:.2f}".rstrip("0").rstrip(".") + unit
    return f"{us:.2f}".rstrip("0").rstrip(".") + "µs"


def items(value):
    """A list from the answer, or none if it holds something else there."""
    return value if isinstance(value, list) else []


def tags(item, key="tags"):
    """Jaeger's key/value list as a dict (the first value of a repeated key wins)."""
    out = {}
    for kv in items(item.get(key)):
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            out.setdefault(kv["key"], kv.get("value"))
    return out


def parent_id(span):
    for ref in items(span.get("references")):
        if isinstance(ref, dict) and ref.get("refType") == "CHILD_OF" and isinstance(ref.get("spanID"), str):
            return ref["spanID"]
    return None


def spans_of(trace):
    return [s for s in items(trace.get("spans")) if isinstance(s, dict) and isinstance(s.get("spanID"), str)]


def has_failed_batch(trace):
    by_id = {s.get("spanID"): s for s in spans_of(trace)}
    for span in by_id.values():
        parent = by_id.get(parent_id(span))
        if (span.get("operationName") == CHILD_OP and parent is not None
                and parent.get("operationName") == PARENT_OP and tags(span).get("otel.status_code") == "ERROR"):
            return True
    return False


def trace_start(trace):
    return min((num(s.get("startTime")) for s in spans_of(trace)), default=0)


def tree(spans):
    """The spans in Jaeger's order, each with its depth: children (by CHILD_OF) under their parent,
    siblings by start time. Spans whose parent is missing are roots; a reference cycle cannot loop."""
    ids = {s.get("spanID") for s in spans}
    children, roots = {}, []
    for s in spans:
        parent = parent_id(s)
        if parent in ids and parent != s.get("spanID"):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    order_key = lambda s: (num(s.get("startTime")), str(s.get("spanID")))  # noqa: E731
    rows, seen = [], set()
    # Roots first; then anything only reachable through a cycle, so no span is dropped.
    for start in sorted(roots, key=order_key) + sorted(spans, key=order_key):
        stack = [(start, 0)]
        while stack:
            span, depth = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            rows.append((span, depth))
            kids = sorted(children.get(span.get("spanID"), []), key=order_key)
            stack.extend((kid, depth + 1) for kid in reversed(kids))
    return rows


def axis_step(total):
    """The largest round tick interval (1, 2, 2.5 or 5 times a power of ten) that gives the axis at
    least four intervals (so at most eight)."""
    raw = total / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    return max(m * magnitude for m in (1, 2, 2.5, 5) if m * magnitude <= raw)


def text(x, y, content, size=12, fill=TEXT, anchor="start", weight=None):
    """A <text> element; `content` must already be escaped (it may hold <tspan>s)."""
    bold = f' font-weight="{weight}"' if weight else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" text-anchor="{anchor}"{bold}>'
            f"{content}</text>")


def render(trace):
    spans = spans_of(trace)
    processes = trace.get("processes") if isinstance(trace.get("processes"), dict) else {}

    def service(span):
        process = processes.get(str(span.get("processID")))
        return process.get("serviceName", "?") if isinstance(process, dict) else "?"

    start = trace_start(trace)
    end = max(num(s.get("startTime")) + num(s.get("duration")) for s in spans)
    total = max(end - start, 1)  # a zero-length trace still gets an axis
    x_at = lambda us: TL_X0 + (TL_X1 - TL_X0) * min(max(us - start, 0), total) / total  # noqa: E731
    rows = tree(spans)
    root = rows[0][0]

    out = []
    # The header, as Jaeger's trace page has it: root service and operation, trace id, summary.
    title = f'{esc(service(root), 40)}: {esc(root.get("operationName"), 60)}'
    out.append(text(LABELS_X, 30, title, size=18, weight="600")
               + text(WIDTH - 20, 30, esc(trace.get("traceID"), 40), size=13, fill=MUTED, anchor="end"))
    try:
        began = (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
                 + datetime.timedelta(microseconds=start)).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    except OverflowError:
        began = "?"
    summary = [("Trace start", began), ("Duration", fmt_us(total)),
               ("Services", len({service(s) for s in spans})), ("Depth", max(d for _, d in rows) + 1),
               ("Total spans", len(spans))]
    out.append(text(LABELS_X, 54, "  ·  ".join(f'<tspan fill="{MUTED}">{k}</tspan> {esc(v)}' for k, v in summary),
                    size=12))

    # The time axis: a band with round ticks, whose grid lines run down through the rows.
    y = 70
    out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="26" fill="#f5f7fa"/>')
    out.append(text(LABELS_X, y + 17, "Service &amp; Operation", size=12, fill=MUTED, weight="600"))
    step = axis_step(total)
    ticks = [i * step for i in range(int(total // step) + 1)]
    y = 96
    bands, body = [], []  # row backgrounds go under the grid lines, everything else over them
    for i, (span, depth) in enumerate(rows):
        indent = 14 * min(depth, 8)  # deep (or hostile) trees still leave room for the names
        span_tags = tags(span)
        failed = span_tags.get("otel.status_code") == "ERROR" or span_tags.get("error") is True
        top = y
        # Left: service and operation, Jaeger's red error mark, and the instrumentation scope, which
        # tells the sidecar's spans (scope otel-sendmmsg) from the app's own.
        x = LABELS_X + indent
        if failed:
            body.append(f'<circle cx="{x + 6}" cy="{y + 11}" r="6" fill="{ERROR}"/>'
                        + text(x + 6, y + 15, "!", size=10, fill="#fff", anchor="middle", weight="700"))
            x += 16
        room = max((LABELS_X + LABELS_W - x) // 7, 8)
        name = (f'<tspan font-weight="600">{esc(service(span), room // 2)}</tspan> '
                f'<tspan fill="{MUTED}">{esc(span.get("operationName"), room // 2)}</tspan>')
        body.append(text(x, y + 15, name, size=13))
        scope = span_tags.get("otel.scope.name")
        if scope is not None:
            body.append(text(x, y + 29, f"scope {esc(scope, room)}", size=10, fill=MUTED))
        # Right: the bar where the span lies in the trace, and its duration.
        s0, dur = num(span.get("startTime")), num(span.get("duration"))
        bx0, bx1 = x_at(s0), x_at(s0 + dur)
        bx1 = max(bx1, bx0 + 2)  # a span shorter than a pixel is still seen
        body.append(f'<rect x="{bx0:.1f}" y="{y + 9}" width="{bx1 - bx0:.1f}" height="14" rx="2" '
                    f'fill="{ERROR if failed else CALM}"/>')
        body.append(text(bx1 + 6, y + 20, fmt_us(dur), size=11, fill=MUTED))
        # The span's logs (OTLP events; the sidecar's are one per message) as ticks across its bar,
        # at their timestamps; those with an error.type red, longer, and labelled under the bar.
        logs = [log for log in items(span.get("logs")) if isinstance(log, dict)]
        labels = []
        for log in sorted(logs, key=lambda log: "error.type" in tags(log, "fields")):  # failed ones on top
            fields = tags(log, "fields")
            tx = min(max(x_at(num(log.get("timestamp"))), bx0), bx1)  # Jaeger rounds both to µs
            if "error.type" in fields:
                body.append(f'<line x1="{tx:.1f}" y1="{y + 3}" x2="{tx:.1f}" y2="{y + 31}" '
                            f'stroke="{ERROR}" stroke-width="2.5"/>')
                index = esc(fields.get("sendmmsg.message.index", "?"), 12)
                labels.append((tx, f'message {index}: {esc(fields["error.type"], 40)}'))
            else:
                body.append(f'<line x1="{tx:.1f}" y1="{y + 6}" x2="{tx:.1f}" y2="{y + 26}" stroke="{TEXT}"/>')
        y += ROW_H
        for tx, label in labels[:3]:  # a hostile span could fail thousands: three say enough
            # Ending at the tick keeps a label near the end of the timeline inside the picture.
            anchor = "end" if tx > (TL_X0 + TL_X1) / 2 else "start"
            body.append(text(tx, y + 8, label, size=11, fill=ERROR, anchor=anchor, weight="600"))
            y += LINE_H
        # The details block: the tags that say what the call did and why it failed, two to a line.
        cells = [(k, span_tags[k]) for k in DETAIL_KEYS if k in span_tags]
        if "network.peer.address" in span_tags:
            peer = f'{span_tags["network.peer.address"]}:{span_tags.get("network.peer.port", "?")}'
            cells.append(("network.peer.address:port", peer))
        lines = [cells[i:i + 2] for i in range(0, len(cells), 2)]
        if logs:
            lines.append([("logs", f"{len(logs)} events, each a tick on the bar; {len(labels)} with error.type")])
        if lines:
            bx = LABELS_X + indent + 16
            body.append(f'<rect x="{bx}" y="{y + 2}" width="{WIDTH - 20 - bx}" '
                        f'height="{LINE_H * len(lines) + 12}" rx="3" fill="#f8f9fb" stroke="{GRID}"/>')
            for line in lines:
                y += LINE_H
                for col, (key, value) in enumerate(line):
                    cell = f'<tspan fill="{MUTED}">{esc(key, 40)}</tspan>  {esc(value, 70 - min(len(key), 40))}'
                    body.append(text(bx + 10 + col * (WIDTH - 20 - bx) / 2, y + 4, cell, size=12))
            y += 22
        if i % 2:
            bands.append(f'<rect x="0" y="{top}" width="{WIDTH}" height="{y - top}" fill="#fafbfc"/>')
    # Grid lines and tick labels, now that the height is known.
    grid = [f'<line x1="{TL_X0 - 5}" y1="70" x2="{TL_X0 - 5}" y2="{y}" stroke="{GRID}"/>']
    for t in ticks:
        tx = TL_X0 + (TL_X1 - TL_X0) * t / total
        anchor = "start" if t == 0 else "middle"
        grid.append(f'<line x1="{tx:.1f}" y1="90" x2="{tx:.1f}" y2="{y}" stroke="{GRID}"/>'
                    + text(tx + (3 if t == 0 else 0), 87, fmt_us(t), size=11, fill=MUTED, anchor=anchor))
    height = y + 14
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">',
        f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>',
        *out, *bands, *grid, *body,
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def load(args):
    if args.json:
        try:
            with open(args.json, "rb") as f:
                return json.load(f), args.json
        except (OSError, ValueError) as e:
            fail(f"reading {args.json}: {e}")
    query = urllib.parse.urlencode({"service": args.service, "limit": 200, "lookback": "1h"})
    url = f"{args.jaeger.rstrip('/')}/api/traces?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response), url
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        fail(f"fetching {url}: {e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", metavar="FILE", help="a saved /api/traces answer")
    source.add_argument("--jaeger", metavar="URL", help="Jaeger's query API, e.g. http://127.0.0.1:16686")
    parser.add_argument("--service", metavar="NAME", help="the service to ask Jaeger for (with --jaeger)")
    parser.add_argument("--out", metavar="FILE.svg", help="where to write the SVG (default: stdout)")
    args = parser.parse_args()
    if args.jaeger and not args.service:
        parser.error("--jaeger needs --service")

    answer, source = load(args)
    traces = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(traces, list):
        errors = answer.get("errors") if isinstance(answer, dict) else None
        fail(f'{source}: no "data" list of traces' + (f": {json.dumps(errors)}" if errors else ""))
    traces = [t for t in traces if isinstance(t, dict) and has_failed_batch(t)]
    if not traces:
        fail(f"{source}: no trace has a {PARENT_OP} span with a {CHILD_OP} child whose "
             f"otel.status_code is ERROR (a batch with a failed message)")
    newest = max(traces, key=lambda t: (trace_start(t), str(t.get("traceID"))))
    svg = render(newest).encode("utf-8")
    # Written only once drawn, so a failed run leaves no half picture.
    if args.out:
        with open(args.out, "wb") as f:
            f.write(svg)
    else:
        sys.stdout.buffer.write(svg)


if __name__ == "__main__":
    main()
