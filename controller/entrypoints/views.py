"""How people see a rollout: the rich view of a status document (``status``, ``status --watch``)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def render(d: dict[str, Any]) -> Group:
    colour = {"Promoted": "green", "Idle": "green", "Progressing": "cyan", "Paused": "yellow", "Aborted": "red"}
    head = Text.assemble(
        (f"{d['system']} ", "bold"), (d["phase"], colour.get(d["phase"], "white")), f"  {d['reason']}: {d['message']}"
    )
    revs = Table("role", "revision", "#", "modules", "req/s", "errors", "fallbacks", box=None)
    tr = d.get("traffic") or {}
    for role in ("stable", "canary"):
        r = d.get(role)
        if not r:
            continue
        t = tr.get(r["revision"], {})
        err = t.get("errorRate")
        revs.add_row(
            role,
            r["revision"],
            str(r.get("number")),
            " ".join(r["modules"]),
            f"{t.get('requestRate', 0):.1f}",
            "-" if err is None else f"{err:.1%}",
            str(t.get("fallbacks", 0)),
        )
    steps = Table("", "step", "", box=None)
    for s in d["steps"]:
        mark = {"done": "[green]✓[/]", "current": "[cyan]▶[/]", "pending": " "}[s["state"]]
        steps.add_row(mark, f"{s['index']}: {s['kind']}", json.dumps(s["value"]) if s["value"] is not None else "")
    checks = Table("check", "verdict", "ok/fail/inc/err", "recent (value vs stable)", box=None)
    for where, runs in d["analysis"].items():
        for name, run in runs.items():
            recent = " ".join(_fmt(m) for m in run["recent"][-5:])
            checks.add_row(
                f"{name} ({where})",
                run["verdict"],
                f"{run['successes']}/{run['failures']}/{run['inconclusive']}/{run['errorsInRow']}",
                recent,
            )
    weight = Text(
        f"canary weight {d['weight']:g} %"
        + (f", mirror {d['mirror']:g} %" if d["mirror"] else "")
        + (f", header route {d['headerRoute']}" if d["headerRoute"] else "")
    )
    notes = [Text(f"⚠ {line}", style="yellow") for line in d.get("drift") or []]
    why = [Text(f"✗ {d['aborted']['sentence']}", style="red")] if d.get("aborted") else []
    return Group(head, *why, weight, *notes, *_governance(d), *_processes(d), revs, steps, checks)


def checks_over_time(d: dict[str, Any]) -> Group:
    """``status --checks``: every check's measurements over time against its threshold, canary
    and stable side by side (what the dashboard draws)."""
    parts: list[Any] = [Text.assemble((f"{d['system']} ", "bold"), d["phase"], f"  {d['reason']}")]
    if d.get("aborted"):
        parts.append(Text(f"✗ {d['aborted']['sentence']}", style="red"))
    for where, runs in d["analysis"].items():
        for name, run in runs.items():
            t = run["threshold"]
            rel = " (canary - stable)" if t.get("relativeTo") == "stable" else ""
            bounds = " ".join(f"{k} {t[k]:g}" for k in ("min", "max") if t.get(k) is not None)
            parts.append(Text(f"{name} ({where}): {bounds}{rel} — {run['verdict']}", style="bold"))
            if run.get("measures"):
                parts.append(Text(f"  measures {run['measures']}", style="dim"))
            table = Table("time", "canary", "stable", "compared", "threshold", "samples", "verdict", box=None)
            for m in run["recent"]:
                table.add_row(
                    time.strftime("%H:%M:%S", time.localtime(m["at"])),
                    _num(m["value"]),
                    _num(m["stable"]),
                    _num(m.get("compared")),
                    bounds + rel,
                    str(m["samples"]),
                    m["verdict"] + (f": {m['error']}" if m["error"] else ""),
                    style={"Failed": "red", "Error": "yellow", "Inconclusive": "yellow"}.get(m["verdict"]),
                )
            parts.append(table)
    if not any(d["analysis"].values()):
        parts.append(Text("no analysis has run in this rollout", style="dim"))
    return Group(*parts)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _governance(d: dict[str, Any]) -> list[Text]:
    """Who made the change in flight and why, break-glass, and the decisions on it."""
    g = d.get("governance")
    if not g:
        return []
    why = f": {g['reason']}" if g.get("reason") else ""
    lines = [Text(f"change {g['revision']} by {g['author']}{why}", style="dim")]
    if g.get("breakGlass"):
        lines.append(Text("⚠ break-glass: the policy's windows and soak were overridden", style="yellow"))
    for x in g.get("decisions") or []:
        verb = "approved" if x["approve"] else "rejected"
        lines.append(Text(f"{verb} by {x['user']}" + (f": {x['reason']}" if x.get("reason") else ""), style="dim"))
    if g.get("missing"):
        lines.append(Text("awaiting " + "; ".join(g["missing"]), style="cyan"))
    return lines


def _fmt(m: dict[str, Any]) -> str:
    if m["error"]:
        return "err"
    if m["value"] is None:
        return "n/a"
    st = f"/{m['stable']:.3g}" if m.get("stable") is not None else ""
    mark = {"Successful": "", "Failed": "✗", "Inconclusive": "?"}.get(m["verdict"], "")
    return f"{m['value']:.3g}{st}{mark}"


def _processes(d: dict[str, Any]) -> list[Text]:
    """One line on the runtime's processes, and one per unit that crashed (which process, how, how often)."""
    p = d.get("processes")
    if not p:
        return []
    lines = [Text(f"processes {p['processes']}, memory {p['rssBytes'] / 2**20:.0f} MiB", style="dim")]
    for unit, c in sorted(p["crashes"].items()):
        last = c.get("last") or {}
        how = f"killed by {last['signal']}" if last.get("signal") else f"exit status {last.get('exitCode', '?')}"
        by = ", ".join(f"{k} {v}" for k, v in sorted(c["byProcess"].items()))
        text = f"⚠ {unit} crashed {c['count']} times ({by}); last: {last.get('process')} pid {last.get('pid')} {how}"
        lines.append(Text(text, style="yellow"))
    return lines
