// Small hand-written SVG charts: a time series with its threshold band, and grouped bars.

export const esc = (s) =>
  String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export const fmt = (v) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.001 || a >= 100000)) return v.toExponential(2);
  return String(Math.round(v * 1000) / 1000);
};

const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

// series: [{name, cls, points: [[t, v], ...]}]; band: {min, max} (null bounds are open).
export function timeSeries(series, { band = null, width = 420, height = 150, label = "" } = {}) {
  const pad = { l: 44, r: 8, t: 10, b: 20 };
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const ts = pts.map((p) => p[0]);
  const vs = pts.map((p) => p[1]);
  for (const b of [band?.min, band?.max]) if (b !== null && b !== undefined) vs.push(b);
  if (!pts.length) return `<p class="muted small">no measurements yet</p>`;
  let [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  if (t1 === t0) [t0, t1] = [t0 - 1, t1 + 1];
  let [v0, v1] = [Math.min(0, ...vs), Math.max(...vs)];
  if (v1 === v0) v1 = v0 + 1;
  v1 += (v1 - v0) * 0.08;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - ((v - v0) / (v1 - v0)) * (height - pad.t - pad.b);
  const parts = [];
  if (band) {
    const top = band.max ?? v1;
    const bottom = band.min ?? v0;
    parts.push(
      `<rect class="band" x="${pad.l}" y="${y(top)}" width="${width - pad.l - pad.r}" height="${Math.max(0, y(bottom) - y(top))}"><title>allowed range</title></rect>`,
    );
    for (const [b, name] of [[band.max, "max"], [band.min, "min"]]) {
      if (b === null || b === undefined) continue;
      parts.push(`<line class="threshold" x1="${pad.l}" x2="${width - pad.r}" y1="${y(b)}" y2="${y(b)}"/>`);
      parts.push(`<text class="axis" x="${width - pad.r}" y="${y(b) - 3}" text-anchor="end">${name} ${esc(fmt(b))}</text>`);
    }
  }
  for (const s of series) {
    const p = s.points.filter((q) => q[1] !== null && q[1] !== undefined);
    if (!p.length) continue;
    parts.push(`<polyline class="line ${esc(s.cls)}" points="${p.map((q) => `${x(q[0])},${y(q[1])}`).join(" ")}"/>`);
    for (const q of p) {
      parts.push(
        `<circle class="dot ${esc(s.cls)} ${esc(q[2] || "")}" cx="${x(q[0])}" cy="${y(q[1])}" r="3"><title>${esc(s.name)} ${esc(fmt(q[1]))} at ${clock(q[0])}${q[2] ? ` (${esc(q[2])})` : ""}</title></circle>`,
      );
    }
  }
  parts.push(`<text class="axis" x="${pad.l - 4}" y="${y(v0)}" text-anchor="end">${esc(fmt(v0))}</text>`);
  parts.push(`<text class="axis" x="${pad.l - 4}" y="${y(v1) + 8}" text-anchor="end">${esc(fmt(v1))}</text>`);
  parts.push(`<text class="axis" x="${pad.l}" y="${height - 4}">${clock(t0)}</text>`);
  parts.push(`<text class="axis" x="${width - pad.r}" y="${height - 4}" text-anchor="end">${clock(t1)}</text>`);
  const legend = series.map((s) => `<span class="key ${esc(s.cls)}">${esc(s.name)}</span>`).join(" ");
  return `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(label)}">${parts.join("")}</svg><div class="legend">${legend}</div>`;
}

// groups: [{label, values: {seriesName: number}}], series: [{name, cls}]; values are shares 0..1.
export function bars(groups, series, { width = 420, height = 140 } = {}) {
  if (!groups.length) return `<p class="muted small">no predictions in the window</p>`;
  const pad = { l: 8, r: 8, t: 8, b: 22 };
  const max = Math.max(0.0001, ...groups.flatMap((g) => series.map((s) => g.values[s.name] || 0)));
  const gw = (width - pad.l - pad.r) / groups.length;
  const bw = Math.max(2, (gw - 6) / series.length);
  const parts = [];
  groups.forEach((g, i) => {
    series.forEach((s, j) => {
      const v = g.values[s.name] || 0;
      const h = (v / max) * (height - pad.t - pad.b);
      const x = pad.l + i * gw + 3 + j * bw;
      parts.push(
        `<rect class="bar ${esc(s.cls)}" x="${x}" y="${height - pad.b - h}" width="${bw - 1}" height="${h}"><title>${esc(s.name)} ${esc(g.label)}: ${(v * 100).toFixed(1)} %</title></rect>`,
      );
    });
    parts.push(`<text class="axis" x="${pad.l + i * gw + gw / 2}" y="${height - 6}" text-anchor="middle">${esc(g.label)}</text>`);
  });
  const legend = series.map((s) => `<span class="key ${esc(s.cls)}">${esc(s.name)}</span>`).join(" ");
  return `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img" aria-label="prediction distribution">${parts.join("")}</svg><div class="legend">${legend}</div>`;
}
