// The views: pure functions from the API's documents to HTML (every value escaped).
import { bars, esc, fmt, timeSeries } from "./chart.js";

const when = (t) => (t ? new Date(t * 1000).toLocaleString([], { hour12: false }) : "–");
const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
const short = (rev) => (rev ? esc(rev) : "–");
const who = (a) => (a ? ` <span class="actor">— ${esc(a.user)}${a.reason ? `: “${esc(a.reason)}”` : ""}</span>` : "");
const badge = (phase) => `<span class="phase ${esc(phase)}">${esc(phase)}</span>`;

// What needs a person, from a summary (systems list) or a status document.
export function attention(s) {
  const target = s.target;
  const stable = typeof s.stable === "string" ? s.stable : s.stable?.revision;
  if (s.phase === "Aborted") return `aborted (${s.reason}): retry, promote again or set the spec back`;
  if (s.phase === "Paused" && s.reason === "AnalysisInconclusive") return "analysis inconclusive: resume or abort";
  if (s.phase === "Paused" && s.reason === "PauseStep") return "waiting at a pause step: resume to continue";
  if (s.phase === "Paused") return `paused (${s.reason})`;
  if (s.reason === "MetricsUnavailable") return "metrics unavailable: holding";
  if (target && stable && target !== stable && ["Idle", "Promoted"].includes(s.phase)) return `spec asks for ${target}`;
  return "";
}

export function systems(list) {
  const rows = list
    .map((s) => {
      const need = attention(s);
      return `<tr data-system="${esc(s.system)}" class="${need ? "needs" : ""}">
        <td><a href="#/s/${encodeURIComponent(s.system)}">${esc(s.system)}</a></td>
        <td>${badge(s.phase)}</td><td class="mono">${short(s.stable)}</td><td class="mono">${short(s.canary)}</td>
        <td class="num">${s.canary ? `${fmt(s.weight)} %` : "–"}</td>
        <td class="attention">${esc(need)}</td></tr>`;
    })
    .join("");
  const needs = list.filter((s) => attention(s)).length;
  return `<section><h1>Systems <span class="muted">${list.length} · ${needs} need attention</span></h1>
    <table id="systems" class="grid"><thead><tr><th>system</th><th>phase</th><th>stable</th><th>canary</th>
    <th>weight</th><th>needs attention</th></tr></thead><tbody>${rows}</tbody></table></section>`;
}

// Why a rollout aborted, in one sentence with the measurement that decided it.
export function why(d) {
  if (d.phase !== "Aborted") return "";
  if (d.aborted?.sentence) return d.aborted.sentence; // the server's own sentence (plan.explain)
  const checks = [...Object.entries(d.analysis.step), ...Object.entries(d.analysis.background)];
  const failed = checks.find(([, c]) => c.verdict === "Failed") || checks.find(([, c]) => c.failures > 0);
  if (failed) {
    const [name, c] = failed;
    const m = [...c.recent].reverse().find((x) => x.verdict === "Failed") || c.recent[c.recent.length - 1];
    const t = c.threshold;
    const rel = t.relativeTo === "stable";
    const bound = [t.min !== undefined && t.min !== null ? `min ${fmt(t.min)}` : "", t.max !== undefined && t.max !== null ? `max ${fmt(t.max)}` : ""]
      .filter(Boolean)
      .join(", ");
    if (m) {
      const measured = m.value === null ? `no value (${m.error || "error"})` : fmt(m.value);
      const vs = m.stable !== null && m.stable !== undefined ? ` against stable's ${fmt(m.stable)}` : "";
      const diff = rel && m.value !== null && m.stable !== null ? ` (a difference of ${fmt(m.value - m.stable)})` : "";
      return `Aborted at ${when(m.at)}: check ${name} measured ${measured} on the canary${vs}${diff}, outside its ${rel ? "range relative to stable" : "range"} (${bound}), failing ${c.failures} time(s).`;
    }
    return `Aborted: check ${name} failed ${c.failures} time(s) (threshold ${bound}).`;
  }
  return `Aborted (${d.reason}): ${d.message}`;
}

function steps(d) {
  if (!d.steps.length) return `<p class="muted">no canary steps</p>`;
  const items = d.steps
    .map((s) => {
      const v = s.value === null || s.value === undefined ? "" : typeof s.value === "object" ? JSON.stringify(s.value) : s.value;
      return `<li class="step ${esc(s.state)}" data-index="${s.index}"><span class="mark"></span>${esc(s.kind)} <span class="mono">${esc(v)}</span></li>`;
    })
    .join("");
  return `<ol id="steps" class="steps">${items}</ol>`;
}

function actualWeight(d) {
  const canary = d.canary && d.traffic[d.canary.revision];
  const stable = d.stable && d.traffic[d.stable.revision];
  const c = canary ? canary.requestRate : 0;
  const s = stable ? stable.requestRate : 0;
  return c + s > 0 ? (100 * c) / (c + s) : null;
}

function check(name, c, whereShown) {
  const where = c.current === false ? `${whereShown}, earlier step` : whereShown;
  const t = c.threshold;
  const rel = t.relativeTo === "stable";
  const held = (m) => m.compared ?? (rel && m.value !== null && m.stable !== null ? m.value - m.stable : m.value);
  const canary = c.recent.map((m) => [m.at, held(m), m.verdict]);
  const series = rel
    ? [{ name: "canary − stable", cls: "canary", points: canary }]
    : [
        { name: "canary", cls: "canary", points: canary },
        { name: "stable", cls: "stable", points: c.recent.map((m) => [m.at, m.stable]) },
      ];
  if (rel) series.push({ name: "canary", cls: "canary-raw", points: c.recent.map((m) => [m.at, m.value]) }, { name: "stable", cls: "stable", points: c.recent.map((m) => [m.at, m.stable]) });
  const last = c.recent[c.recent.length - 1];
  return `<div class="check card" data-check="${esc(name)}">
    <h3>${esc(name)} <span class="verdict ${esc(c.verdict)}">${esc(c.verdict)}</span> <span class="muted small">${where}</span></h3>
    <p class="small">ok ${c.successes} · failed ${c.failures} · inconclusive ${c.inconclusive} · errors in a row ${c.errorsInRow}${c.count ? ` · of ${c.count}` : ""}
    · threshold ${esc(JSON.stringify(t))}${last ? ` · last ${fmt(last.value)} (${last.samples} samples)` : ""}
    ${c.measures ? `· measures <span class="mono">${esc(c.measures)}</span> every ${fmt(c.interval)} s over ${fmt(c.window)} s` : ""}</p>
    ${timeSeries(series, { band: { min: t.min ?? null, max: t.max ?? null }, label: name })}</div>`;
}

function signals(d) {
  const roles = ["stable", "canary"].map((r) => [r, d[r] && d.traffic[d[r].revision]]).filter(([, t]) => t);
  if (!roles.length) return `<p class="muted">no traffic seen in the last 30 s</p>`;
  const canary = d.canary && d.traffic[d.canary.revision];
  const dis = canary && canary.compared ? canary.disagreed / canary.compared : null;
  const labels = new Set(roles.flatMap(([, t]) => Object.keys(t.labels || {})));
  const share = (t, l) => {
    const n = Object.values(t.labels || {}).reduce((a, b) => a + b, 0);
    return n ? (t.labels[l] || 0) / n : 0;
  };
  const groups = [...labels].sort().map((l) => ({ label: l, values: Object.fromEntries(roles.map(([r, t]) => [r, share(t, l)])) }));
  const conf = roles.map(([r, t]) => `<td class="num">${fmt(t.confidence)}</td>`).join("");
  return `<div id="signals" class="cols">
    <div><h3>Disagreement on mirrored traffic</h3><p class="big">${pct(dis)}</p>
      <p class="small muted">${canary ? `${canary.disagreed ?? 0} of ${canary.compared ?? 0} compared` : "no canary"}</p>
      <h3>Mean confidence</h3><table class="grid"><tr>${roles.map(([r]) => `<th>${r}</th>`).join("")}</tr><tr>${conf}</tr></table></div>
    <div><h3>Prediction distribution</h3>${bars(groups, roles.map(([r]) => ({ name: r, cls: r })))}</div></div>`;
}

function traffic(d, samples) {
  const rows = Object.entries(d.traffic)
    .map(([rev, t]) => `<tr><td class="mono">${esc(rev)}</td><td>${esc(t.role || "")}</td><td class="num">${fmt(t.requestRate)}</td>
      <td class="num">${pct(t.errorRate)}</td><td class="num">${t.fallbacks}</td><td class="num">${t.mirrored}</td></tr>`)
    .join("");
  const series = (key, f) =>
    ["stable", "canary"].map((r) => ({ name: r, cls: r, points: samples.map((s) => [s.at, s[r] ? f(s[r]) : null]) }));
  return `<table id="traffic" class="grid"><thead><tr><th>revision</th><th>role</th><th>req/s</th><th>errors</th>
    <th>fallbacks</th><th>mirrored</th></tr></thead><tbody>${rows || `<tr><td colspan="6" class="muted">no traffic in the last 30 s</td></tr>`}</tbody></table>
    <div class="cols"><div><h3>Requests/s (while this page is open)</h3>${timeSeries(series("rps", (t) => t.requestRate), { label: "requests per second", height: 110 })}</div>
    <div><h3>Error rate</h3>${timeSeries(series("err", (t) => t.errorRate), { label: "error rate", height: 110 })}</div></div>`;
}

export function events(rows) {
  const items = [...rows]
    .reverse()
    .map((e) => `<tr class="${e.warning ? "warn" : ""}"><td class="mono small">${when(e.at)}</td><td>${esc(e.reason)}</td>
      <td>${esc(e.message)}${who(e.actor)}</td></tr>`)
    .join("");
  return `<table id="events" class="grid"><thead><tr><th>at</th><th>reason</th><th>message</th></tr></thead><tbody>${items}</tbody></table>`;
}

// checks: {step: {name: CheckState}, background: {...}} — what the page has seen of this canary
export function rollout(d, evs, samples, checksSeen) {
  const aw = actualWeight(d);
  const w = why(d);
  const need = attention(d);
  const seen = checksSeen || d.analysis;
  const checks = [
    ...Object.entries(seen.step).map(([n, c]) => check(n, c, "step analysis")),
    ...Object.entries(seen.background).map(([n, c]) => check(n, c, "background")),
  ].join("");
  const rev = (r) => (r ? `<span class="mono">${esc(r.revision)}</span> #${esc(r.number ?? "?")} <span class="small muted">${esc(r.modules.join(" "))}</span>` : "–");
  return `<section id="rollout" data-system="${esc(d.system)}" data-phase="${esc(d.phase)}" data-reason="${esc(d.reason)}">
    <h1>${esc(d.system)} ${badge(d.phase)} <span class="muted small">${esc(d.reason)}: ${esc(d.message)}</span></h1>
    ${w ? `<p id="why" class="why">${esc(w)}</p>` : ""}
    ${need && !w ? `<p class="attention-box">${esc(need)}</p>` : ""}
    ${d.drift.map((x) => `<p class="attention-box">${esc(x)}</p>`).join("")}
    <div id="actions" class="actions">
      ${["promote", "promote-full", "pause", "resume", "abort", "retry", "rollback", "undo", "toggle"]
        .map((a) => `<button data-action="${a}">${a}</button>`)
        .join("")}
      <a href="#/s/${encodeURIComponent(d.system)}/history">revisions &amp; history →</a>
    </div>
    <div class="cols">
      <div class="card"><h2>Revisions</h2><p>stable: ${rev(d.stable)}</p><p>canary: ${rev(d.canary)}</p>
        <p>target: <span class="mono">${short(d.target)}</span>${d.previousStable ? ` · previous stable <span class="mono">${esc(d.previousStable)}</span>` : ""}</p>
        <p id="weights">weight set <b>${fmt(d.weight)} %</b> · actual (last 30 s of traffic) <b>${aw === null ? "–" : `${fmt(aw)} %`}</b>${d.mirror ? ` · mirror ${fmt(d.mirror)} %` : ""}${d.paused ? " · <b>paused</b>" : ""}</p></div>
      <div class="card"><h2>Steps</h2>${steps(d)}</div>
    </div>
    <h2>Analysis</h2><div id="checks" class="checks">${checks || `<p class="muted">no analysis measured for this rollout</p>`}</div>
    <h2>ML signals</h2>${signals(d)}
    <h2>Traffic &amp; errors</h2>${traffic(d, samples)}
    <h2>Events</h2>${events(evs.slice(-40))}
  </section>`;
}

// What changed between two revisions, module by module (a module may run at several versions:
// a step and its fallback), plus what the person asked for.
function diff(prev, cur) {
  const asked = cur.changed && cur.changed.length ? ` <span class="muted small">asked: ${esc(cur.changed.join(" "))}</span>` : "";
  if (!prev) return cur.modules.map((m) => `<span class="add">${esc(m)}</span>`).join(" ");
  const byName = (l) => {
    const out = {};
    for (const m of l) (out[m.split("@")[0]] ||= []).push(m.split("@")[1]);
    for (const k of Object.keys(out)) out[k] = out[k].sort().join(",");
    return out;
  };
  const a = byName(prev.modules);
  const b = byName(cur.modules);
  const out = [];
  for (const n of Object.keys({ ...a, ...b }).sort()) {
    if (a[n] === b[n]) continue;
    out.push(`<span class="change">${esc(n)}: ${esc(a[n] ?? "∅")} → ${esc(b[n] ?? "∅")}</span>`);
  }
  return (out.join(" ") || `<span class="muted">no module change</span>`) + asked;
}

export function history(system, rows, evs) {
  const body = rows
    .map((r, i) => `<tr data-number="${r.number}"><td>${r.number}</td><td class="mono">${esc(r.revision)}${r.actor ? `<br><span class="small">${who(r.actor)}</span>` : ""}</td><td>${esc(r.role || "")}</td>
      <td class="small">${when(r.created)}</td><td class="diff">${diff(rows[i - 1], r)}</td>
      <td class="small">${r.outcomes.map((o) => `${esc(o.outcome)} ${when(o.at)}${o.reason ? `: ${esc(o.reason)}` : ""}${who(o.actor)}`).join("<br>")}</td>
      <td><a href="#/s/${encodeURIComponent(system)}/r/${r.number}">modules</a></td></tr>`)
    .join("");
  return `<section><h1>${esc(system)} <span class="muted">revisions &amp; history</span></h1>
    <p><a href="#/s/${encodeURIComponent(system)}">← rollout</a></p>
    <table id="history" class="grid"><thead><tr><th>#</th><th>revision</th><th>role</th><th>created</th><th>module diff</th><th>outcomes</th><th></th></tr></thead>
    <tbody>${body}</tbody></table><h2>Events</h2>${events(evs)}</section>`;
}

export function modules(system, number, doc) {
  const port = (ports) =>
    Object.entries(ports)
      .map(([n, p]) => `${esc(n)}: ${esc(p.dtype)}${p.shape ? `[${esc(p.shape.join(","))}]` : ""}${p.space ? ` space ${esc(p.space)}` : ""}${p.labels ? ` labels ${esc(p.labels.join(","))}` : ""}`)
      .join("<br>");
  const mods = doc.modules
    .map((m) => `<tr data-ref="${esc(m.ref)}"><td class="mono">${esc(m.ref)}</td><td>${esc(m.role)}</td><td>${esc(m.stability)}</td>
      <td class="mono small" title="${esc(m.digest)}">${esc(m.digest.slice(0, 19))}…</td><td class="small">${port(m.contract.inputs)}</td>
      <td class="small">${port(m.contract.outputs)}</td><td class="small">${esc(m.metadata.license || "")} · ${esc((m.metadata.owners || []).join(", "))}${m.faults ? ' · <b class="error">fault injection</b>' : ""}</td>
      <td class="small">${m.lineage.map((l) => `${esc(l.ref)}${l.child !== m.ref ? ` (parent of ${esc(l.child)})` : ""}`).join(", ") || esc(m.metadata.provenance?.origin || "–")}</td></tr>`)
    .join("");
  const edges = doc.edges
    .map((e) => `<tr class="${e.compatible ? "" : "bad"}"><td>${esc(e.from)} → ${esc(e.step)}.${esc(e.port)}</td><td class="mono small">${esc(e.producer)} → ${esc(e.consumer)}${e.adapter ? ` via ${esc(e.adapter)}` : ""}</td>
      <td>${e.compatible ? "✓ compatible" : `✗ ${esc(e.problems.map((p) => `${p.field}: ${p.reason}`).join("; "))}`}</td></tr>`)
    .join("");
  const matrices = doc.matrices
    .map((m) => {
      const cell = (p, c) => m.cells.find((x) => x.producer === p && x.consumer === c);
      const head = m.consumers.map((c) => `<th class="mono small">${esc(c)}</th>`).join("");
      const rows = m.producers
        .map((p) => `<tr><th class="mono small">${esc(p)}</th>${m.consumers.map((c) => {
          const x = cell(p, c);
          return `<td class="${x.compatible ? "ok" : "bad"}" title="${esc(x.problems.map((q) => `${q.field}: ${q.reason}`).join("; "))}">${x.compatible ? "✓" : "✗"}</td>`;
        }).join("")}</tr>`)
        .join("");
      return `<div class="card"><h3>${esc(m.edge)}</h3><table class="grid matrix"><tr><th></th>${head}</tr>${rows}</table></div>`;
    })
    .join("");
  return `<section id="modules"><h1>${esc(system)} <span class="muted">revision ${esc(number)} · <span class="mono">${esc(doc.revision)}</span></span></h1>
    <p><a href="#/s/${encodeURIComponent(system)}/history">← revisions &amp; history</a></p>
    <h2>Modules</h2><table class="grid"><thead><tr><th>version</th><th>role</th><th>stability</th><th>digest</th><th>inputs</th><th>outputs</th><th>license · owners</th><th>lineage (parents)</th></tr></thead><tbody>${mods}</tbody></table>
    <h2>Compatibility of every edge</h2><table id="edges" class="grid"><tbody>${edges}</tbody></table>
    ${doc.violations.length ? `<p class="error">${doc.violations.map((v) => esc(`${v.step} ${v.field}: ${v.reason}`)).join("<br>")}</p>` : ""}
    <h2>Compatibility matrices (all registered versions)</h2><div class="checks">${matrices || `<p class="muted">none</p>`}</div>
    ${doc.notes.map((n) => `<p class="muted small">${esc(n)}</p>`).join("")}</section>`;
}

export function login(message) {
  return `<section class="login"><h1>Sign in</h1>
    <p>Paste your modship token (from <span class="mono">modship dashboard</span>, or <span class="mono">modship token create USER</span>).
    It is kept in this tab only and sent as a bearer token.</p>
    <form id="login"><input id="token" type="password" autocomplete="off" placeholder="token" required>
    <button type="submit">Sign in</button></form>${message ? `<p class="error">${esc(message)}</p>` : ""}</section>`;
}
