// The dashboard's page: hash routes, data loading, live updates and the actions.
import { ApiError, adoptTokenFromFragment, api, forgetToken, setToken, token, watch } from "./api.js";
import { esc } from "./chart.js";
import * as views from "./views.js";

const $ = (id) => document.getElementById(id);
const main = $("main");
const state = { route: null, status: null, history: null, samples: [], samplesFor: null, timer: null, pending: null };
const enc = encodeURIComponent;

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const parts = h.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "s" && parts[1]) {
    if (parts[2] === "history") return { view: "history", system: parts[1] };
    if (parts[2] === "r" && parts[3]) return { view: "modules", system: parts[1], number: Number(parts[3]) };
    return { view: "rollout", system: parts[1] };
  }
  return { view: "systems" };
}

function crumbs(r) {
  const c = ['<a href="#/">systems</a>'];
  if (r.system) c.push(`<a href="#/s/${enc(r.system)}">${esc(r.system)}</a>`);
  if (r.view === "history" || r.view === "modules") c.push(`<a href="#/s/${enc(r.system)}/history">history</a>`);
  if (r.view === "modules") c.push(`revision ${esc(r.number)}`);
  $("crumbs").innerHTML = c.join(" / ");
}

function toast(text, bad = false) {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 6000);
}

function showLogin(message) {
  $("logout").hidden = true;
  main.innerHTML = views.login(message);
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setToken($("token").value);
    start();
  });
}

function refused(err) {
  if (err instanceof ApiError && err.status === 401) {
    forgetToken();
    showLogin("Your token was refused (missing, unknown or revoked). Paste a valid one.");
    return true;
  }
  return false;
}

function sample(d) {
  if (state.samplesFor !== d.system) {
    state.samples = [];
    state.samplesFor = d.system;
  }
  const pick = (r) => (d[r] && d.traffic[d[r].revision]) || null;
  state.samples.push({ at: Date.now() / 1000, stable: pick("stable"), canary: pick("canary") });
  if (state.samples.length > 120) state.samples.shift();
}

// Step analyses are cleared when a step ends; the page keeps what it saw of the canary in flight
// so that every check stays drawn over time (merged by measurement time, the latest counters).
const seenChecks = new Map();

function remember(d) {
  const key = `${d.system}|${d.canary ? d.canary.revision : ""}`;
  const mem = seenChecks.get(key) || { step: {}, background: {} };
  for (const where of ["step", "background"]) {
    for (const c of Object.values(mem[where])) c.current = false;
    for (const [n, c] of Object.entries(d.analysis[where])) {
      const byAt = new Map((mem[where][n]?.recent || []).map((m) => [m.at, m]));
      for (const m of c.recent) byAt.set(m.at, m);
      mem[where][n] = { ...c, recent: [...byAt.values()].sort((a, b) => a.at - b.at).slice(-120), current: true };
    }
  }
  seenChecks.set(key, mem);
  return mem;
}

async function load() {
  const r = route();
  state.route = r;
  crumbs(r);
  try {
    if (r.view === "systems") {
      main.innerHTML = views.systems(await api("GET", "/v1/systems"));
    } else if (r.view === "rollout") {
      const [d, evs] = await Promise.all([
        api("GET", `/v1/systems/${enc(r.system)}`),
        api("GET", `/v1/systems/${enc(r.system)}/events?limit=100`),
      ]);
      state.status = d;
      sample(d);
      main.innerHTML = views.rollout(d, evs, state.samples, remember(d));
    } else if (r.view === "history") {
      const [rows, evs] = await Promise.all([
        api("GET", `/v1/systems/${enc(r.system)}/history`),
        api("GET", `/v1/systems/${enc(r.system)}/events?limit=200`),
      ]);
      state.history = rows;
      main.innerHTML = views.history(r.system, rows, evs);
    } else if (r.view === "modules") {
      main.innerHTML = views.modules(r.system, r.number, await api("GET", `/v1/systems/${enc(r.system)}/modules?revision=${r.number}`));
    }
    document.body.dataset.loaded = String(Date.now());
    // for benchmarks and people's devtools: when each view was first drawn (the frame after)
    const mark = `modship:drawn:${r.view}`;
    if (!performance.getEntriesByName(mark).length) requestAnimationFrame(() => performance.mark(mark));
  } catch (err) {
    if (!refused(err)) main.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
}

// Reload what is shown when its system changed (coalesced: at most one load in flight).
function changed(systems) {
  const r = state.route;
  if (!r) return;
  if (r.view !== "systems" && !systems.includes(r.system)) return;
  if ($("confirm").open) return; // do not redraw under an open dialog; the next change or tick will
  if (state.pending) {
    state.pending.again = true;
    return;
  }
  state.pending = { again: false };
  load().finally(() => {
    const again = state.pending.again;
    state.pending = null;
    if (again) changed(r.view === "systems" ? [] : [r.system]);
  });
}

// -- actions ------------------------------------------------------------------------------------
const ACTIONS = {
  promote: { title: "Promote new module versions", text: "Starts a canary of a new revision with these module versions (one grouped revision).", path: "promote", fields: () => `<label>Modules (NAME@VERSION, space separated)<input name="modules" required></label>`, body: (f) => ({ modules: f.get("modules").split(/[\s,]+/).filter(Boolean) }) },
  "promote-full": { title: "Promote fully", text: "Skips the remaining steps: the canary becomes stable now.", path: "promote-full" },
  pause: { title: "Pause", text: "Stops the rollout where it is; traffic stays as it is.", path: "pause" },
  resume: { title: "Resume", text: "Releases a pause (a user pause, a pause step or an inconclusive analysis).", path: "resume" },
  abort: { title: "Abort", text: "Sends 100 % of traffic to stable and stops the canary.", path: "abort" },
  retry: { title: "Retry", text: "Starts the aborted canary again from step 0.", path: "retry" },
  rollback: { title: "Roll back", text: "Aborts the canary in flight, or goes back to the previous (warm) stable at once.", path: "rollback" },
  undo: {
    title: "Undo",
    text: "Goes back to an earlier revision (default: the previous stable).",
    path: "undo",
    fields: () => `<label>To revision number (empty: previous stable)<input name="toRevision" type="number" min="1"></label>`,
    body: (f) => (f.get("toRevision") ? { toRevision: Number(f.get("toRevision")) } : {}),
  },
  toggle: {
    title: "Toggle a flag",
    text: "Turns a feature flag on or off for a share of traffic, for every revision.",
    path: "toggle",
    fields: (d) => {
      const flags = Object.keys({ ...(d.flags || {}), ...(d.toggles || {}) });
      const opts = flags.map((f) => `<option value="${esc(f)}"></option>`).join("");
      return `<label>Flag (a flag of the system's spec)<input name="flag" list="known-flags" required autocomplete="off"></label>
        <datalist id="known-flags">${opts}</datalist>
        <label class="inline"><input name="enabled" type="checkbox" checked> enabled</label>
        <label>Percent <input name="percent" type="number" min="0" max="100" value="100"></label>`;
    },
    body: (f) => ({ flag: f.get("flag"), enabled: f.get("enabled") === "on", percent: Number(f.get("percent")) }),
  },
};

function openAction(name) {
  const a = ACTIONS[name];
  const d = state.status;
  if (!a || !d) return;
  const dlg = $("confirm");
  $("confirm-title").textContent = `${a.title}: ${d.system}?`;
  $("confirm-text").textContent = a.text;
  $("confirm-fields").innerHTML = a.fields ? a.fields(d) : "";
  $("confirm-reason").value = "";
  $("confirm-error").textContent = "";
  $("confirm-ok").disabled = true;
  $("confirm-ok").textContent = a.title;
  dlg.dataset.action = name;
  dlg.showModal();
  $("confirm-reason").focus();
}

async function submitAction(ev) {
  ev.preventDefault();
  const dlg = $("confirm");
  const a = ACTIONS[dlg.dataset.action];
  const form = new FormData($("confirm-form"));
  const reason = String(form.get("reason") || "").trim();
  if (!reason) {
    $("confirm-error").textContent = "Give a reason: it is recorded with your name.";
    return;
  }
  const system = state.status.system;
  $("confirm-ok").disabled = true;
  try {
    const out = await api("POST", `/v1/systems/${enc(system)}/${a.path}`, { ...(a.body ? a.body(form) : {}), reason });
    dlg.close();
    toast(`${a.title}: ${out.message || out.command || out.revision || "done"}`);
    changed([system]);
  } catch (err) {
    $("confirm-ok").disabled = false;
    if (err instanceof ApiError && err.status === 401) {
      dlg.close();
      refused(err);
      return;
    }
    $("confirm-error").textContent = `Refused (${err.status || "network"}): ${err.message}`;
  }
}

function setLive(s) {
  const el = $("live");
  el.textContent = s === "live" ? "live" : s;
  el.className = `live ${s === "live" ? "on" : "off"}`;
  if (s === "unauthorized") showLogin("Your token was refused.");
}

let watching = false;

async function start() {
  if (!token()) {
    showLogin("");
    return;
  }
  $("logout").hidden = false;
  await load();
  if (!watching && token()) {
    watching = true;
    watch(changed, setLive).finally(() => (watching = false));
  }
}

function init() {
  adoptTokenFromFragment();
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#token=")) adoptTokenFromFragment();
    if (token()) load();
  });
  main.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (b) openAction(b.dataset.action);
  });
  $("confirm-reason").addEventListener("input", () => ($("confirm-ok").disabled = !$("confirm-reason").value.trim()));
  $("confirm-cancel").addEventListener("click", () => $("confirm").close());
  $("confirm-form").addEventListener("submit", submitAction);
  $("logout").addEventListener("click", () => {
    forgetToken();
    location.hash = "#/";
    showLogin("Signed out.");
  });
  // traffic figures come from the router, not from state files: refresh an active rollout's view
  setInterval(() => {
    const r = state.route;
    const d = state.status;
    if (r && r.view === "rollout" && d && d.system === r.system && d.canary && !document.hidden) changed([r.system]);
  }, 5000);
  start();
}

init();
