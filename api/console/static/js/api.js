// The console's one door to the service: the public /v1 API, with the key the user gave.

const KEY_ITEM = "mifo.apiKey";
// The API sits one level above the console (/console/ -> /), also behind a path prefix.
const BASE = new URL("../", document.baseURI);

// A key just typed is a candidate, kept in memory until a request with it succeeds; only
// then is it stored for the tab, so a refused key is not kept.
let candidate = "";
export const apiKey = {
  get: () => candidate || sessionStorage.getItem(KEY_ITEM) || "",
  set: (value) => {
    candidate = value.trim();
  },
  accepted: (key) => {
    // `key` answered a request: stored if it is the candidate
    if (!key || key !== candidate) return;
    sessionStorage.setItem(KEY_ITEM, candidate);
    candidate = "";
  },
  clear: () => {
    candidate = "";
    sessionStorage.removeItem(KEY_ITEM);
  },
};

export function url(path) {
  return new URL(path.replace(/^\//, ""), BASE).href;
}

/** A refusal from the API: its problem JSON (detail, field, fix) or a transport failure. */
export class ApiProblem extends Error {
  constructor(status, body) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.field = body.field || null;
    this.fix = body.fix || null;
  }
}

let keyNeeded = null;

/** `ask(problem)` resolves true once the user entered a key, false if they gave up. */
export function onKeyNeeded(ask) {
  keyNeeded = ask;
}

async function problemOf(res) {
  try {
    const body = await res.json();
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON (a proxy's page): fall through to the status line
  }
  return { title: res.statusText, detail: `The server answered ${res.status} ${res.statusText}.` };
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const key = apiKey.get();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** One request; a 401 asks for a key and tries again with it. JSON in, JSON out. `prefer`:
 * the Prefer header (`wait=N`: a job-creating POST answers once the job ended). */
export async function api(path, { method = "GET", json, form, signal, prefer } = {}) {
  for (;;) {
    const extra = json === undefined ? {} : { "Content-Type": "application/json" };
    if (prefer) extra.Prefer = prefer;
    const body = json === undefined ? form : JSON.stringify(json);
    let res;
    const used = apiKey.get();
    try {
      res = await fetch(url(path), { method, headers: headers(extra), body, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiProblem(0, {
        detail: `The API cannot be reached (${err.message}).`,
        fix: "check that the service is running",
      });
    }
    if (res.status === 401 && keyNeeded) {
      const problem = new ApiProblem(401, await problemOf(res));
      if (await keyNeeded(problem)) continue;
      throw problem;
    }
    if (!res.ok) throw new ApiProblem(res.status, await problemOf(res));
    apiKey.accepted(used);
    return res.status === 204 ? null : res.json();
  }
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export function isTerminal(job) {
  return TERMINAL.has(job.status);
}

/**
 * Follow a job until it ends: `onJob(job)` after every change, `onGone()` if it is deleted,
 * `onRefused(problem)` if the API refuses the reads (401 with the key prompt canceled, 403):
 * following stops then, as asking again every second would bring the prompt straight back.
 * EventSource cannot send headers, so it serves only when no key is in use; with a key the
 * same stream is read through fetch(), and polling GET /v1/jobs/{id} is the last resort.
 * Returns a function that stops following.
 */
export function followJob(id, onJob, onGone = () => {}, onRefused = () => {}) {
  const path = `v1/jobs/${encodeURIComponent(id)}`;
  const stop = new AbortController();
  let ended = false;
  const seen = (job) => {
    if (ended) return;
    onJob(job);
    if (isTerminal(job)) finish();
  };
  const gone = () => {
    if (!ended) onGone();
    finish();
  };
  let source = null;
  function finish() {
    ended = true;
    stop.abort();
    if (source) source.close();
  }
  const poll = async () => {
    while (!ended) {
      try {
        seen(await api(path, { signal: stop.signal }));
      } catch (err) {
        if (err.name === "AbortError") return;
        if (err.status === 404) return gone();
        if (err.status === 401 || err.status === 403) {
          if (!ended) onRefused(err);
          return finish();
        }
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  if (!apiKey.get() && typeof EventSource === "function") {
    source = new EventSource(url(`${path}/events`));
    const handle = (ev) => seen(JSON.parse(ev.data));
    source.addEventListener("status", handle);
    source.addEventListener("progress", handle);
    source.addEventListener("deleted", gone);
    source.onerror = () => {
      // The stream closes after a terminal state; an error before that (the connection
      // dropped, or a key is needed after all) hands over to polling, which asks for a key.
      if (ended) return;
      source.close();
      poll();
    };
  } else {
    const fallBack = () => ended || poll(); // the stream ended early: finish by polling
    streamWithKey(`${path}/events`, stop.signal, seen, gone).then(fallBack, fallBack);
  }
  return finish;
}

// Reads text/event-stream from fetch(): EventSource has no way to send Authorization.
// Hand-written because the format is a few lines and no library ships with the package.
async function streamWithKey(path, signal, seen, gone) {
  const res = await fetch(url(path), { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok || !res.body) throw new ApiProblem(res.status, await problemOf(res));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "deleted") return gone();
      if (data.length && (event === "status" || event === "progress")) {
        seen(JSON.parse(data.join("\n")));
      }
    }
  }
}
