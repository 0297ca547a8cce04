// The jobs: filtered by status, newest first; cancel.

import { api, isTerminal } from "./api.js";
import { el, percent, problemText, view, when } from "./dom.js";

const PAGE = 20;
const REFRESH_MS = 2000; // while a listed job is unfinished, the list is read again

export function showJobs(main) {
  main.append(view("view-jobs"));
  const rows = main.querySelector("#job-rows");
  const status = main.querySelector("#job-status");
  const more = main.querySelector("#more-jobs");
  const problem = main.querySelector(".form-problem");
  let offset = 0;
  let timer = null;
  let latest = 0; // only the answer to the latest request is shown (the filter may change)
  const cancels = new Map(); // job id -> its Cancel button, kept across refreshes (and focus)
  const load = async (fresh) => {
    clearTimeout(timer);
    const asked = ++latest;
    if (fresh) offset = 0;
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (status.value) query.set("status", status.value);
    try {
      const page = await api(`v1/jobs?${query}`);
      if (asked !== latest) return;
      problem.textContent = "";
      // a kept button leaves the page for a moment below: it gets its focus back after
      const focused = [...cancels.values()].includes(document.activeElement)
        ? document.activeElement
        : null;
      if (fresh) rows.replaceChildren();
      const button = (job) => {
        if (isTerminal(job)) return null;
        if (!cancels.has(job.id)) {
          cancels.set(
            job.id,
            cancelButton(job, problem, () => load(true)),
          );
        }
        return cancels.get(job.id);
      };
      rows.append(...page.data.map((job) => row(job, button(job))));
      if (focused?.isConnected) focused.focus();
      offset += page.data.length;
      more.hidden = !page.next;
      if (!rows.children.length) {
        rows.append(el("tr", {}, el("td", { colspan: "7", class: "hint" }, "No jobs match.")));
      }
      if (page.data.some((job) => !isTerminal(job)) && offset <= PAGE) {
        timer = setTimeout(() => load(true), REFRESH_MS);
      }
    } catch (err) {
      problem.textContent = problemText(err);
    }
  };
  status.addEventListener("change", () => load(true));
  main.querySelector("#refresh-jobs").addEventListener("click", () => load(true));
  more.addEventListener("click", () => load(false));
  load(true);
  return () => clearTimeout(timer);
}

function cancelButton(job, problem, reload) {
  return el(
    "button",
    {
      type: "button",
      onclick: async () => {
        try {
          await api(`v1/jobs/${job.id}/cancel`, { method: "POST" });
          reload();
        } catch (err) {
          problem.textContent = problemText(err);
        }
      },
    },
    `Cancel job ${job.id.slice(0, 8)}`,
  );
}

function row(job, cancel) {
  const p = job.progress || {};
  const progress = isTerminal(job)
    ? ""
    : `${p.phase || ""} ${p.fraction ? percent(p.fraction) : ""}`.trim();
  // data-label: the column's name, shown beside each value where rows stack (phones)
  return el(
    "tr",
    { "data-job": job.id },
    // The whole id: it pastes into `mifo remote` and the API as it is.
    el("td", { "data-label": "Job" }, el("code", { class: "job-id" }, job.id)),
    el("td", { "data-label": "Kind" }, job.kind),
    el(
      "td",
      { "data-label": "Status" },
      el("span", { class: "badge", "data-status": job.status }, job.status),
    ),
    el("td", { "data-label": "Progress" }, progress),
    el("td", { "data-label": "Created" }, when(job.created_at)),
    el("td", {}, job.concept_id ? conceptLink(job.concept_id) : ""),
    el("td", {}, cancel || ""),
  );
}

const conceptNames = new Map(); // concept id -> a promise of its instances' names

// A link to the job's concept, named by its instances once they are read (once per concept).
function conceptLink(id) {
  const link = el("a", { href: `#/concepts/${id}` }, "Open concept");
  if (!conceptNames.has(id)) {
    conceptNames.set(
      id,
      api(`v1/concepts/${id}`).then((concept) => concept.tokens.map((t) => t.name).join(", ")),
    );
  }
  conceptNames
    .get(id)
    .then((names) => {
      link.textContent = `Open concept: ${names}`;
    })
    .catch(() => conceptNames.delete(id)); // gone or unreachable: the plain link stays
  return link;
}
