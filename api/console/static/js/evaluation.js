// A concept's evaluation: the Evaluate form (prompts, one per line; images per prompt, steps,
// seed) and the latest evaluation, followed live: its table (per token SIM-C, SIM-D, NSIM-D
// and CS, then their mean) and its chart.

import { api } from "./api.js";
import { clearProblems, el, reportProblem, when } from "./dom.js";
import { trackJob } from "./progress.js";

const METRICS = [
  ["sim_c", "SIM-C"],
  ["sim_d", "SIM-D"],
  ["nsim_d", "NSIM-D"],
  ["cs", "CS"],
];

/** Fill the evaluation `section` (a fold) of ready `concept`: the form, and the latest
 * evaluation when there is one. */
export function evaluation(section, concept, stops, fail) {
  const latest = { stop: () => {} };
  const show = (job) => {
    latest.stop();
    latest.stop = showJob(section, job);
    stops.push(() => latest.stop());
  };
  watchSubmit(section.querySelector("#evaluate-form"), concept, (job) => {
    section.open = true;
    show(job);
  });
  section.hidden = false;
  api(`v1/concepts/${concept.id}/evaluations?limit=1`).then((page) => {
    if (stops.left) return;
    if (page.data.length) show(page.data[0]);
    else section.querySelector(".eval-note").textContent = "none yet";
  }, fail);
}

/** On submit: POST the evaluation (the empty fields left out: the server's defaults). */
function watchSubmit(form, concept, submitted) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearProblems(form);
    const button = form.querySelector("#evaluate");
    button.disabled = true;
    try {
      const body = evaluationBody(form);
      submitted(await api(`v1/concepts/${concept.id}/evaluations`, { method: "POST", json: body }));
    } catch (err) {
      reportProblem(form, err);
    } finally {
      button.disabled = false;
    }
  });
}

/** The JSON body of POST /v1/concepts/{id}/evaluations: one prompt per non-empty line (none:
 * the paper's ten), the numbers as typed. */
function evaluationBody(form) {
  const prompts = form
    .querySelector("#eval-prompts")
    .value.split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "");
  const body = prompts.length ? { prompts } : {};
  for (const [name, sel] of [
    ["images_per_prompt", "#eval-images"],
    ["steps", "#eval-steps"],
    ["seed", "#eval-seed"],
  ]) {
    const raw = form.querySelector(sel).value.trim();
    if (raw !== "") body[name] = Number(raw);
  }
  return body;
}

/** Follow evaluation `job` into the section; returns the stopper. */
function showJob(section, job) {
  const note = section.querySelector(".eval-note");
  const progress = el("div", { class: "job-progress" });
  const result = el("div", { class: "evaluation-result" });
  const prompts = job.request?.prompts?.length ?? 0;
  section
    .querySelector(".evaluation-latest")
    .replaceChildren(
      el("h4", {}, "Latest evaluation"),
      el("p", { class: "hint" }, `Job ${job.id} · ${when(job.created_at)} · ${prompts} prompts`),
      progress,
      result,
    );
  note.textContent = job.status;
  return trackJob(progress, job, (done) => {
    note.textContent = done.status;
    if (done.status !== "succeeded") return;
    // the stream's last body may predate the result's links: read the job once more
    api(`v1/jobs/${done.id}`).then((full) => {
      const ev = full.result?.evaluation;
      if (!ev) return;
      note.textContent = ev.mean.cs === null ? "done" : `mean CS ${number(ev.mean.cs)}`;
      result.replaceChildren(...resultParts(ev));
    });
  });
}

/** The table, the chart and the download of evaluation.json. */
function resultParts(ev) {
  return [
    metricsTable(ev),
    ev.chart
      ? el("img", {
          src: ev.chart.url,
          class: "evaluation-chart",
          alt: "Chart of SIM-C, SIM-D, NSIM-D and CS per token and their mean (bars), with their standard deviations (lines)",
        })
      : null,
    ev.record
      ? el("a", { href: ev.record.url, download: "evaluation.json" }, "Download evaluation.json")
      : null,
  ];
}

function metricsTable(ev) {
  const head = el(
    "tr",
    {},
    el("th", { scope: "col" }, "Token"),
    el("th", { scope: "col" }, "Images"),
    ...METRICS.map(([, title]) => el("th", { scope: "col" }, title)),
  );
  const row = (r, mean) =>
    el(
      "tr",
      { class: mean ? "mean" : null },
      el("th", { scope: "row" }, mean ? "Mean" : `${r.token} ${r.name}`),
      el("td", { "data-label": "Images" }, String(r.images)),
      ...METRICS.map(([key, title]) =>
        el("td", { "data-label": title, "data-metric": key }, cell(r[key], r[`${key}_std`])),
      ),
    );
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      { class: "metrics" },
      el("caption", {}, "Mean ± standard deviation over the images; CS is that of the means"),
      el("thead", {}, head),
      el("tbody", {}, ...ev.rows.map((r) => row(r, false)), row(ev.mean, true)),
    ),
  );
}

function number(v) {
  return Number(v).toFixed(3);
}

/** A metric's mean, its standard deviation under it ("n/a" where none was measured). */
function cell(mean, std) {
  if (mean === null || mean === undefined) return "n/a";
  if (std === null || std === undefined) return number(mean);
  return el("span", {}, number(mean), " ", el("small", { class: "std" }, `± ${number(std)}`));
}
