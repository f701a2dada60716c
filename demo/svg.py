"""The demo's timeline as an SVG picture, written by hand (no plotting library needed).

One horizontal lane per unit, logical time left to right:

- a thin gold strip along the top of a lane while that unit is the leader;
- a pale band from the moment the operation was requested until the unit got its turn;
- a solid bar for each critical section (restart or upgrade), labelled with its fencing token;
  a red hatched bar for one whose hook failed;
- grey arrows for the lock handoffs (one section's end to the next section's start);
- markers for faults (red), `juju resolved` (green) and elections (gold);
- small ticks along the bottom of a lane: every hook the unit ran.

    svg = render(Picture(title, subtitle, t0, t1, lanes, bars, marks, "restart", leaders))
"""

from __future__ import annotations

import dataclasses
import itertools
from xml.sax.saxutils import escape, quoteattr

from charmlibs.rollingops import split_token

FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
WIDTH = 980
LEFT = 200  # room for the lane labels
RIGHT = 84  # room for the hook counts
TOP = 86
LANE = 46
BOTTOM = 104
FOOTNOTE = 20  # one line per numbered marker
BAR_COLOUR = {"restart": "#2f6fb3", "upgrade": "#2e8b57"}
FAULT = "#d1392b"
RESOLVED = "#2e8b57"
LEADER = "#e0a100"
WAIT = "#dfe7f1"
INK = "#1f2933"
MARK_COLOUR = {  # mark kinds that get a numbered marker
    "crash": FAULT,
    "error": FAULT,
    "fault": FAULT,
    "resolved": RESOLVED,
    "leader": LEADER,
    "note": "#52606d",
}
MUTED = "#6b7785"


@dataclasses.dataclass
class Lane:
    """One unit's row."""

    unit: str
    hooks: list[int]  # start time of every hook it ran in the window
    waiting_from: int | None = None  # when its operation was requested
    removed_at: int | None = None


def token_label(token: object) -> str:
    """How a fencing token is shown: `#epoch:sequence` (rollingops after a backend switch), `#n`.

    charmlibs.rollingops packs (epoch, sequence) into one integer (`split_token`): the plain
    integers order the same way, the pair is what a reader can follow.
    """
    if token is None:
        return ""
    if isinstance(token, int) and not isinstance(token, bool) and token >= 0:
        epoch, sequence = split_token(token)
        return f"#{epoch}:{sequence}" if epoch else f"#{sequence}"
    return f"#{token}"


@dataclasses.dataclass
class Interval:
    """One critical section."""

    unit: str
    start: int
    end: int
    committed: bool
    token: object = None


@dataclasses.dataclass
class Mark:
    """Something that happened to a unit at a time (kind: crash, error, fault, resolved, ...)."""

    t: int
    unit: str
    kind: str
    label: str


@dataclasses.dataclass
class Picture:
    title: str
    subtitle: str
    t0: int
    t1: int
    lanes: list[Lane]
    bars: list[Interval]
    marks: list[Mark]
    operation: str = "restart"
    leaders: list[tuple[int, str | None]] = dataclasses.field(default_factory=list)
    outages: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # etcd [t1, t2)


def render(p: Picture) -> str:
    """The whole SVG document as text."""
    return _Canvas(p).draw()


class _Canvas:
    def __init__(self, p: Picture):
        self.p = p
        self.lo = p.t0 - 1
        self.hi = max(p.t1 + 1, self.lo + 2)
        self.row = {lane.unit: i for i, lane in enumerate(p.lanes)}
        self.parts: list[str] = []
        self.top_labels: list[tuple[float, str, str]] = []  # (x, text, colour) above the lanes
        notes = len(self.notes())  # footnote lines
        self.height = TOP + LANE * len(p.lanes) + BOTTOM + (FOOTNOTE * notes + 14 if notes else 0)

    def x(self, t: float) -> float:
        return round(LEFT + (t - self.lo) * (WIDTH - LEFT - RIGHT) / (self.hi - self.lo), 1)

    def y(self, unit: str) -> float:
        return TOP + LANE * self.row[unit]

    def add(self, text: str) -> None:
        self.parts.append(text)

    def text(self, x: float, y: float, body: str, size: int = 12, **attrs: str) -> None:
        extra = "".join(f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in attrs.items())
        self.add(f'<text x="{x}" y="{y}" font-size="{size}"{extra}>{escape(body)}</text>')

    # --- the document -------------------------------------------------------------------------

    def draw(self) -> str:
        p = self.p
        self.add(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{self.height}" '
            f'viewBox="0 0 {WIDTH} {self.height}" font-family="{FONT}" fill="{INK}">'
        )
        self.add(f"<title>{escape(p.title)}</title>")
        self.defs()
        self.add(f'<rect width="{WIDTH}" height="{self.height}" fill="#ffffff"/>')
        self.text(24, 34, p.title, 19, font_weight="bold")
        self.text(24, 58, p.subtitle, 13, fill=MUTED)
        self.grid()
        for lane in p.lanes:
            self.lane(lane)
        self.outages()
        self.request_line()
        self.draw_top_labels()
        self.handoffs()
        for bar in p.bars:
            self.bar(bar)
        self.marks()
        self.footnotes()
        self.legend()
        self.add("</svg>")
        return "\n".join(self.parts) + "\n"

    def defs(self) -> None:
        self.add(
            "<defs>"
            '<pattern id="failed" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)">'
            '<rect width="6" height="6" fill="#f6d5d1"/>'
            f'<rect width="3" height="6" fill="{FAULT}"/>'
            "</pattern>"
            '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker>'
            "</defs>"
        )

    def grid(self) -> None:
        top, bottom = TOP - 6, TOP + LANE * len(self.p.lanes)
        span = self.hi - self.lo
        step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500) if span / s <= 16)
        first = (self.lo // step + 1) * step
        self.add('<g class="axis">')
        for t in range(first, self.hi, step):
            x = self.x(t)
            self.add(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#e6e9ee"/>')
            self.text(x, bottom + 16, f"t={t}", 11, fill=MUTED, text_anchor="middle")
        self.text(
            (LEFT + WIDTH - RIGHT) / 2, bottom + 34,
            "logical time (ticks: one hook takes 1 tick)", 11, fill=MUTED, text_anchor="middle",
        )  # fmt: skip
        self.add("</g>")

    def lane(self, lane: Lane) -> None:
        y = self.y(lane.unit)
        i = self.row[lane.unit]
        fill = "#f7f9fb" if i % 2 == 0 else "#ffffff"
        self.add(f'<g class="lane" data-unit={quoteattr(lane.unit)}>')
        self.add(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE}" fill="{fill}"/>')
        led = bool(self.leader_spans(lane.unit))
        self.text(24, y + LANE / 2 + (0 if led else 5), lane.unit, 14)
        if led:
            self.text(24, y + LANE / 2 + 14, "★ leader", 10, fill=LEADER)
        for t0, t1 in self.leader_spans(lane.unit):
            x0, x1 = self.x(t0), self.x(t1)
            self.add(
                f'<rect x="{x0}" y="{y + 3}" width="{x1 - x0}" height="4" rx="2" fill="{LEADER}">'
                f"<title>{escape(lane.unit)} is the leader</title></rect>"
            )
        start = lane.waiting_from
        if start is not None:
            mine = [b.start for b in self.p.bars if b.unit == lane.unit]
            end = max(mine, default=lane.removed_at if lane.removed_at is not None else self.p.t1)
            if end > start:
                x0, x1 = self.x(start), self.x(end)
                self.add(
                    f'<rect x="{x0}" y="{y + 14}" width="{x1 - x0}" height="{LANE - 28}" rx="4" '
                    f'fill="{WAIT}"><title>waiting for the lock</title></rect>'
                )
        self.text(WIDTH - 12, y + LANE / 2 + 4, f"{len(lane.hooks)} hooks", 11, fill=MUTED,
                  text_anchor="end")  # fmt: skip
        if lane.removed_at is not None:
            x = self.x(lane.removed_at)
            self.add(
                f'<rect x="{x}" y="{y}" width="{WIDTH - RIGHT - x}" height="{LANE}" '
                'fill="#eceff3" opacity="0.85"/>'
            )
            self.text(x + 10, y + LANE / 2 + 4, "removed", 11, fill=MUTED, font_style="italic")
        self.add("</g>")

    def leader_spans(self, unit: str) -> list[tuple[float, float]]:
        spans = []
        history = self.p.leaders
        for k, (t, who) in enumerate(history):
            end = history[k + 1][0] if k + 1 < len(history) else self.hi
            if who == unit and end > self.lo:
                spans.append((max(t, self.lo), end))
        return spans

    def request_line(self) -> None:
        requests = [m for m in self.p.marks if m.kind == "request"]
        if not requests:
            return
        t = min(m.t for m in requests)
        x = self.x(t)
        top, bottom = TOP - 6, TOP + LANE * len(self.p.lanes)
        self.add(
            f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="{INK}" '
            'stroke-dasharray="4 3" stroke-width="1"/>'
        )
        what = f"{self.p.operation} requested on {len(requests)} unit{'s' * (len(requests) > 1)}"
        self.top_labels.append((x + 4, what, INK))

    def draw_top_labels(self) -> None:
        """The labels of the strip above the lanes, left to right, each after the one before."""
        free = 0.0
        for x, what, colour in sorted(self.top_labels):
            x = max(x, free)
            self.text(x, TOP - 8, what, 11, fill=colour)
            free = x + label_width(what, 11) + 8

    def handoffs(self) -> None:
        done = sorted(self.p.bars, key=lambda b: (b.start, b.unit))
        for a, b in itertools.pairwise(done):
            if a.unit == b.unit or a.unit not in self.row or b.unit not in self.row:
                continue
            x0, y0 = self.x(a.end), self.y(a.unit) + LANE / 2
            x1, y1 = self.x(b.start), self.y(b.unit) + LANE / 2
            bend = max(18.0, (x1 - x0) / 2 + 12)
            curve = f"M{x0},{y0} C{x0 + bend},{y0} {x1 - bend},{y1} {x1},{y1}"
            self.add(
                f'<path class="handoff" d="{curve}" '
                f'fill="none" stroke="{MUTED}" stroke-width="1.4" marker-end="url(#arrow)">'
                f"<title>lock handoff {escape(a.unit)} to {escape(b.unit)}</title></path>"
            )

    def bar(self, bar: Interval) -> None:
        if bar.unit not in self.row:
            return
        y = self.y(bar.unit)
        x0, x1 = self.x(bar.start), self.x(max(bar.end, bar.start + 0.5))
        colour = BAR_COLOUR.get(self.p.operation, BAR_COLOUR["restart"])
        fill = colour if bar.committed else "url(#failed)"
        what = f"{self.p.operation} t={bar.start}-{bar.end}" + (
            "" if bar.committed else " (failed)"
        )
        self.add(
            f'<rect class="section" data-unit={quoteattr(bar.unit)} x="{x0}" y="{y + 10}" '
            f'width="{x1 - x0}" height="{LANE - 20}" rx="5" fill="{fill}"'
            + ("" if bar.committed else f' stroke="{FAULT}" stroke-width="1.5"')
            + f"><title>{escape(what)}</title></rect>"
        )
        label = token_label(bar.token)
        if bar.committed and label and x1 - x0 > 8 * len(label):
            self.text((x0 + x1) / 2, y + LANE / 2 + 4, label, 11, fill="#ffffff",
                      text_anchor="middle", font_weight="bold")  # fmt: skip

    def notes(self) -> list[list[Mark]]:
        """Footnotes in time order: marks with the same kind and text close in time share one."""
        shown = [m for m in self.p.marks if m.unit in self.row and m.kind in MARK_COLOUR]
        groups: list[list[Mark]] = []
        for mark in sorted(shown, key=lambda m: (m.t, self.row[m.unit])):
            for group in groups:
                first = group[0]
                if (first.kind, first.label) == (mark.kind, mark.label) and mark.t - first.t <= 3:
                    group.append(mark)
                    break
            else:
                groups.append([mark])
        return groups

    def marks(self) -> None:
        """Numbered markers; in a lane each one at least a marker's width after the one before."""
        free: dict[str, float] = {}  # lane -> the first x where the next marker fits
        for number, group in enumerate(self.notes(), 1):
            for mark in group:
                x = max(self.x(mark.t), free.get(mark.unit, 0.0))
                free[mark.unit] = x + 17
                y = self.y(mark.unit) + 11
                self.add(
                    f'<g class="mark {mark.kind}"><circle cx="{x}" cy="{y}" r="8" '
                    f'fill="{MARK_COLOUR[mark.kind]}" stroke="#ffffff" stroke-width="1.5"/>'
                    f"<title>{escape(mark.label)}</title></g>"
                )
                self.text(x, y + 4, str(number), 10, fill="#ffffff", text_anchor="middle",
                          font_weight="bold")  # fmt: skip

    def footnotes(self) -> None:
        y = TOP + LANE * len(self.p.lanes) + 62 + 34
        spans = [_span(group) for group in self.notes()]
        column = 48 + max((label_width(span, 12) for span in spans), default=0) + 10
        for number, group in enumerate(self.notes(), 1):
            first = group[0]
            colour = MARK_COLOUR[first.kind]
            self.add(f'<circle cx="32" cy="{y - 4}" r="8" fill="{colour}"/>')
            self.text(32, y, str(number), 10, fill="#ffffff", text_anchor="middle",
                      font_weight="bold")  # fmt: skip
            self.text(48, y, _span(group), 12, fill=MUTED)
            units = sorted((m.unit for m in group), key=self.row.__getitem__)
            who = units[0] if len(units) == 1 else _short(units)
            self.text(column, y, f"{who}: {first.label}", 12)
            y += FOOTNOTE

    def outages(self) -> None:
        top, bottom = TOP - 6, TOP + LANE * len(self.p.lanes)
        for t1, t2 in self.p.outages:
            x1, x2 = self.x(t1), self.x(min(t2, self.hi))
            self.add(
                f'<g class="outage"><rect x="{x1}" y="{top}" width="{x2 - x1}" '
                f'height="{bottom - top}" fill="{FAULT}" opacity="0.08"/>'
                f'<line x1="{x1}" y1="{top}" x2="{x1}" y2="{bottom}" stroke="{FAULT}" '
                'stroke-dasharray="3 3"/>'
                f'<line x1="{x2}" y1="{top}" x2="{x2}" y2="{bottom}" stroke="{FAULT}" '
                'stroke-dasharray="3 3"/></g>'
            )
            self.top_labels.append((x1 + 4, f"etcd unreachable t={t1}..{t2}", FAULT))

    def legend(self) -> None:
        y = TOP + LANE * len(self.p.lanes) + 62
        colour = BAR_COLOUR.get(self.p.operation, BAR_COLOUR["restart"])
        x = 24.0
        items = [
            (f'<rect x="{{x}}" y="{y - 9}" width="22" height="12" rx="3" fill="{colour}"/>',
             f"{self.p.operation} (inside the lock, #token or #epoch:sequence)"),
            (f'<rect x="{{x}}" y="{y - 9}" width="22" height="12" rx="3" fill="{WAIT}"/>',
             "waiting for the lock"),
            (f'<path d="M{{x}},{y - 3} L{{x22}},{y - 3}" stroke="{MUTED}" stroke-width="1.4" '
             'marker-end="url(#arrow)"/>', "lock handoff"),
            (f'<rect x="{{x}}" y="{y - 5}" width="22" height="4" rx="2" fill="{LEADER}"/>',
             "leader"),
            (f'<rect x="{{x}}" y="{y - 9}" width="22" height="12" rx="3" fill="url(#failed)" '
             f'stroke="{FAULT}"/>', f"{self.p.operation} that failed"),
        ]  # fmt: skip
        wanted = {f"{self.p.operation} that failed": any(not b.committed for b in self.p.bars)}
        self.add('<g class="legend">')
        for shape, label in items:
            if not wanted.get(label, True):
                continue
            self.add(shape.format(x=x, x11=x + 11, x22=x + 22))
            self.text(x + 28, y + 2, label, 11)
            x += 28 + 6.6 * len(label) + 22
        self.add("</g>")


def label_width(text: str, size: float, bold: bool = False) -> float:
    """A generous estimate of a label's width in pixels (sans-serif, no font metrics at hand)."""
    return len(text) * size * (0.66 if bold else 0.62)


def _span(group: list[Mark]) -> str:
    """`t=5`, or `t=5-7` for a footnote shared by marks at several times."""
    first, last = group[0].t, max(m.t for m in group)
    return f"t={first}" + (f"-{last}" if last != first else "")


def _short(units: list[str]) -> str:
    """'app/0, app/1, app/3' -> 'app/0, 1, 3' (one application)."""
    app = units[0].rsplit("/", 1)[0]
    return app + "/" + ", ".join(u.rsplit("/", 1)[1] for u in units)
