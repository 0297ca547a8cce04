// A job's live state: phase, step, ETA, losses when the server reports them; cancel.

import { api, followJob, isTerminal } from "./api.js";
import { duration, el, problemText } from "./dom.js";

const PHASES = {
  phase1: "Phase 1: token embeddings",
  phase2: "Phase 2: fine-tune",
  prior: "Class images",
  diagnostics: "Diagnostics",
  synthesis: "Synthesis",
  evaluation: "Evaluation: syntheses, each image scored",
};

/** The parts of a job's box, made once so that updates keep them (and the focus). */
function partsOf(box) {
  if (!box.jobParts) {
    const parts = {
      bar: el("progress", { max: "1", value: "0" }),
      status: el("p", { class: "status-line", role: "status" }),
      losses: el("p", { class: "losses", hidden: true }),
      error: el("p", { class: "problem", hidden: true }),
      cancel: el("button", { type: "button", class: "cancel", hidden: true }, "Cancel job"),
      refusal: el("p", { class: "problem", role: "alert", hidden: true }),
    };
    parts.cancel.addEventListener("click", async () => {
      parts.cancel.disabled = true;
      parts.refusal.hidden = true;
      try {
        renderJob(box, await api(`v1/jobs/${box.jobId}/cancel`, { method: "POST" }));
      } catch (err) {
        parts.refusal.textContent = problemText(err);
        parts.refusal.hidden = false;
      } finally {
        parts.cancel.disabled = false;
      }
    });
    box.replaceChildren(...Object.values(parts));
    box.jobParts = parts;
  }
  return box.jobParts;
}

/** Show `job` in `box`, updating the same elements each time. */
export function renderJob(box, job) {
  const p = job.progress || {};
  const fraction = job.status === "succeeded" ? 1 : p.fraction || 0;
  const parts = [
    `Status: ${job.status}${job.cancel_requested && !isTerminal(job) ? " (cancel requested)" : ""}`,
  ];
  if (p.phase && !isTerminal(job)) parts.push(PHASES[p.phase] || p.phase);
  if (p.step !== null && p.step !== undefined && p.total && !isTerminal(job)) {
    parts.push(`step ${p.step} of ${p.total}`);
  }
  if (!isTerminal(job) && job.status === "running") parts.push(`ETA ${duration(p.eta_seconds)}`);
  const queue = job.status === "queued" ? job.queue : null; // servers that report it
  if (queue) {
    const start = queue.estimated_start_seconds;
    parts.push(
      `position ${queue.position} in its queue${start == null ? "" : `, starts in about ${duration(start)}`}`,
    );
  }
  const losses =
    p.losses && Object.keys(p.losses).length
      ? Object.entries(p.losses)
          .map(([k, v]) => `${k} ${Number(v).toFixed(4)}`)
          .join(", ")
      : null;
  const ui = partsOf(box);
  box.jobId = job.id;
  ui.bar.value = fraction;
  ui.bar.setAttribute("aria-label", `Progress of job ${job.id}`);
  ui.status.dataset.status = job.status;
  ui.status.textContent = parts.join(" · ");
  ui.losses.hidden = !losses;
  ui.losses.textContent = losses ? `Losses: ${losses}` : "";
  ui.error.hidden = !job.error;
  ui.error.textContent = job.error ? `${job.error.type}: ${job.error.message}` : "";
  ui.cancel.hidden = isTerminal(job);
}

/** Follow the job into `box` until it ends; `done(job)` then. Returns the stopper. */
export function trackJob(box, job, done = () => {}) {
  renderJob(box, job);
  if (isTerminal(job)) {
    done(job);
    return () => {};
  }
  return followJob(
    job.id,
    (next) => {
      renderJob(box, next);
      if (isTerminal(next)) done(next);
    },
    () => {
      box.jobParts = null;
      box.replaceChildren(el("p", { class: "hint" }, "This job was deleted."));
    },
    (err) => {
      const ui = partsOf(box);
      ui.refusal.textContent = `No longer followed: ${problemText(err)}`;
      ui.refusal.hidden = false;
    },
  );
}
