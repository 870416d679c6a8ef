// The control API from the page: bearer token in sessionStorage (never a cookie, never a URL
// the server sees), JSON in and out, and the live feed read with fetch (EventSource cannot send
// an Authorization header).

const KEY = "modship.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// `modship dashboard` opens /dashboard/#token=...: keep it for this tab, wipe it from the address bar.
export function adoptTokenFromFragment() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (!m) return;
  sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search + "#/");
}

export const token = () => sessionStorage.getItem(KEY);
export const setToken = (t) => sessionStorage.setItem(KEY, t.trim());
export const forgetToken = () => sessionStorage.removeItem(KEY);

function headers(json) {
  const h = { Accept: "application/json" };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

export async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Calls onChange(systems) for each change event; onState("live" | "reconnecting" | "unauthorized").
export async function watch(onChange, onState) {
  for (;;) {
    try {
      const r = await fetch("/v1/events/stream", {
        headers: { ...headers(false), Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
      });
      if (r.status === 401) {
        onState("unauthorized");
        return;
      }
      if (!r.ok || !r.body) throw new Error(String(r.status));
      onState("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (event === "change" && data) onChange(JSON.parse(data).systems || []);
        }
      }
    } catch {
      // the controller restarted or the network blinked: try again
    }
    onState("reconnecting");
    await sleep(1000);
  }
}
