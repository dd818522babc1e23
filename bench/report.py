"""Turn one run's results into a table (text and markdown), floor checks and a chart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGETS = ("direct", "nginx", "pop3proxy")
MODES = ("plain", "tls")
CONCURRENCY = (1, 16, 128)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    path: tuple[str, ...]
    unit: str
    higher_is_better: bool


def _rows() -> list[Row]:
    rows = []
    for mode in MODES:
        for c in CONCURRENCY:
            rows.append(
                Row(
                    f"cpu_{mode}_c{c}",
                    f"proxy CPU per session, {mode}, c={c}",
                    ("sessions", mode, str(c), "cpu_ms"),
                    "ms",
                    False,
                )
            )
    for mode in MODES:
        for c in CONCURRENCY:
            rows.append(
                Row(
                    f"rate_{mode}_c{c}",
                    f"sessions per second, {mode}, c={c}",
                    ("sessions", mode, str(c), "per_s"),
                    "1/s",
                    True,
                )
            )
    for mode in MODES:
        rows.append(
            Row(
                f"bulk_{mode}",
                f"bulk 10 MB RETR, {mode}, one stream",
                ("bulk", mode, "mb_s"),
                "MB/s",
                True,
            )
        )
    for mode in MODES:
        rows.append(
            Row(
                f"idle_{mode}",
                f"memory per idle session, {mode}",
                ("idle", mode, "kb_per_session"),
                "KB PSS",
                False,
            )
        )
    for mode in MODES:
        rows.append(
            Row(
                f"latency_{mode}",
                f"session latency p50, ordinary client, {mode}",
                ("ordinary", mode, "p50_ms"),
                "ms",
                False,
            )
        )
    return rows


ROWS = _rows()


def value(results: dict[str, Any], target: str, row: Row) -> float | None:
    node: Any = results["targets"].get(target, {})
    for part in row.path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _fmt(number: float | None, digits: int = 2) -> str:
    if number is None:
        return "n/a"
    if abs(number) >= 100:
        return f"{number:.0f}"
    if abs(number) >= 10:
        return f"{number:.1f}"
    return f"{number:.{digits}f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in ROWS:
        values = [value(results, target, row) for target in TARGETS]
        if all(v is None for v in values):
            continue
        direct, nginx, ours = values
        out.append(
            [
                f"{row.label} ({row.unit})",
                *(_fmt(v) for v in values),
                _fmt(_ratio(ours, nginx)),
                _fmt(_ratio(ours, direct)),
            ]
        )
    return out


def header(results: dict[str, Any]) -> list[str]:
    workers = results.get("settings", {}).get("workers", 1)
    nginx = f"nginx ({workers} worker{'s' if workers > 1 else ''})"
    ours = f"pop3proxy ({workers} workers)" if workers > 1 else "pop3proxy"
    return ["figure", "direct Dovecot", nginx, ours, "ours/nginx", "ours/direct"]


def text_table(results: dict[str, Any]) -> str:
    head = header(results)
    rows = [head, *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=False)
        ]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    rows = table_rows(results)
    head = header(results)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- floors and goals ------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    text: str
    rows: tuple[str, ...]
    check: Callable[[dict[str, Any], Row], tuple[float | None, bool | None]]


def _vs(target: str, limit: float, at_most: bool):
    def check(results: dict[str, Any], row: Row) -> tuple[float | None, bool | None]:
        ratio = _ratio(value(results, "pop3proxy", row), value(results, target, row))
        if ratio is None:
            return None, None
        return ratio, ratio <= limit if at_most else ratio >= limit

    return check


_CPU_ROWS = tuple(f"cpu_{m}_c{c}" for m in MODES for c in CONCURRENCY)

FLOORS = (
    Floor("CPU per session <= 1.75x nginx", _CPU_ROWS, _vs("nginx", 1.75, True)),
    Floor("TLS idle memory <= 2.6x nginx", ("idle_tls",), _vs("nginx", 2.6, True)),
    Floor("TLS bulk >= 0.8x nginx", ("bulk_tls",), _vs("nginx", 0.8, False)),
    Floor("plaintext bulk >= 0.9x direct", ("bulk_plain",), _vs("direct", 0.9, False)),
    Floor(
        "ordinary-client latency <= 2x direct",
        ("latency_plain", "latency_tls"),
        _vs("direct", 2.0, True),
    ),
)

GOALS = (
    Floor("goal: CPU per session <= nginx", _CPU_ROWS, _vs("nginx", 1.0, True)),
    Floor("goal: TLS bulk >= nginx", ("bulk_tls",), _vs("nginx", 1.0, False)),
    Floor("goal: TLS idle memory <= nginx", ("idle_tls",), _vs("nginx", 1.0, True)),
    Floor(
        "goal: ordinary-client latency <= 1.3x direct",
        ("latency_plain", "latency_tls"),
        _vs("direct", 1.3, True),
    ),
)


def floor_lines(results: dict[str, Any], markdown: bool = False) -> list[str]:
    by_key = {row.key: row for row in ROWS}
    lines = []
    for floor in (*FLOORS, *GOALS):
        for key in floor.rows:
            row = by_key[key]
            ratio, ok = floor.check(results, row)
            verdict = "n/a" if ok is None else ("met" if ok else "NOT met")
            text = f"{floor.text} [{row.label}]: ratio {_fmt(ratio)} -> {verdict}"
            lines.append(f"- {text}" if markdown else f"  {text}")
    return lines


# -- chart -----------------------------------------------------------------------


CHART_ROWS = (
    ("cpu_plain_c16", "CPU/session plain, c=16 (ms)"),
    ("cpu_tls_c16", "CPU/session TLS, c=16 (ms)"),
    ("bulk_plain", "bulk RETR plain (MB/s)"),
    ("bulk_tls", "bulk RETR TLS (MB/s)"),
    ("idle_plain", "idle session plain (KB PSS)"),
    ("idle_tls", "idle session TLS (KB PSS)"),
    ("latency_plain", "latency p50 plain, poplib (ms)"),
    ("latency_tls", "latency p50 TLS, poplib (ms)"),
)
COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "pop3proxy": "#1565c0"}


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Draw the chart; returns a message instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: chart skipped (pip install matplotlib)"
    by_key = {row.key: row for row in ROWS}
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (key, title) in zip(axes.flat, CHART_ROWS, strict=False):
        row = by_key[key]
        names, heights = [], []
        for target in TARGETS:
            v = value(results, target, row)
            if v is not None:
                names.append(target)
                heights.append(v)
        bars = ax.bar(names, heights, color=[COLORS[n] for n in names])
        ax.bar_label(bars, labels=[_fmt(h) for h in heights], fontsize=8)
        better = "higher is better" if row.higher_is_better else "lower is better"
        ax.set_title(f"{title}\n{better}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.15)
    fig.suptitle("pop3proxy beside nginx mail proxy and direct Dovecot (one run, same machine)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
