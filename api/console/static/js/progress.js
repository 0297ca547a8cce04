// A job's live state: phase, step, ETA, losses when the server reports them; cancel.

import { api, followJob, isTerminal } from "./api.js";
import { duration, el, problemText } from "./dom.js";

const PHASES = { phase1: "Phase 1: token embeddings", phase2: "Phase 2: fine-tune",
  prior: "Class images", diagnostics: "Diagnostics", synthesis: "Synthesis" };

/** Render `job` into `box` (replacing what was there). */
export function renderJob(box, job) {
  const p = job.progress || {};
  const fraction = job.status === "succeeded" ? 1 : p.fraction || 0;
  const parts = [`Status: ${job.status}${job.cancel_requested && !isTerminal(job) ? " (cancel requested)" : ""}`];
  if (p.phase && !isTerminal(job)) parts.push(PHASES[p.phase] || p.phase);
  if (p.step !== null && p.step !== undefined && p.total && !isTerminal(job)) parts.push(`step ${p.step} of ${p.total}`);
  if (!isTerminal(job) && job.status === "running") parts.push(`ETA ${duration(p.eta_seconds)}`);
  const queue = job.status === "queued" ? job.queue : null; // servers that report it
  if (queue) {
    const start = queue.estimated_start_seconds;
    parts.push(`position ${queue.position} in its queue${start == null ? "" : `, starts in about ${duration(start)}`}`);
  }
  const losses = p.losses && Object.keys(p.losses).length
    ? Object.entries(p.losses).map(([k, v]) => `${k} ${Number(v).toFixed(4)}`).join(", ")
    : null;
  box.replaceChildren(...[
    el("progress", { max: "1", value: String(fraction), "aria-label": `Progress of job ${job.id}` }),
    el("p", { class: "status-line", "data-status": job.status }, parts.join(" · ")),
    losses ? el("p", { class: "losses" }, `Losses: ${losses}`) : null,
    job.error ? el("p", { class: "problem" }, `${job.error.type}: ${job.error.message}`) : null,
  ].filter(Boolean));
  if (!isTerminal(job)) {
    const cancel = el("button", { type: "button", class: "cancel", onclick: async () => {
      cancel.disabled = true;
      try {
        renderJob(box, await api(`v1/jobs/${job.id}/cancel`, { method: "POST" }));
      } catch (err) {
        box.append(el("p", { class: "problem", role: "alert" }, problemText(err)));
        cancel.disabled = false;
      }
    } }, "Cancel job");
    box.append(cancel);
  }
}

/** Follow the job into `box` until it ends; `done(job)` then. Returns the stopper. */
export function trackJob(box, job, done = () => {}) {
  renderJob(box, job);
  if (isTerminal(job)) {
    done(job);
    return () => {};
  }
  return followJob(job.id, (next) => {
    renderJob(box, next);
    if (isTerminal(next)) done(next);
  }, () => box.replaceChildren(el("p", { class: "hint" }, "This job was deleted.")));
}
