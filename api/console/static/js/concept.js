// One concept: its learning job, attention maps and leakage, then compose (compose.js), the
// results (results.js) and the evaluation (evaluation.js).

import { api, isTerminal } from "./api.js";
import { compose } from "./compose.js";
import { el, percent, problemText, view } from "./dom.js";
import { evaluation } from "./evaluation.js";
import { COLOURS } from "./paint.js";
import { trackJob } from "./progress.js";
import { addResult, listResults } from "./results.js";

// A token whose attention has at least this share inside another instance's mask gets a
// warning: it would pull that instance's look into its own box.
export const LEAK_WARN = 0.1;

export function showConcept(main, id) {
  main.append(view("view-concept"));
  // Followers start when their reads answer, maybe after the user left: none starts then,
  // and one that still slips in is stopped at once.
  const stops = {
    left: false,
    list: [],
    push(stop) {
      if (this.left) stop();
      else this.list.push(stop);
    },
  };
  const fail = (err) => {
    main.querySelector(".form-problem").textContent = problemText(err);
  };
  const load = async () => {
    const concept = await api(`v1/concepts/${encodeURIComponent(id)}`);
    if (stops.left) return;
    const names = concept.tokens.map((t) => t.name).join(", ");
    main.querySelector("#concept-title").textContent = `Concept: ${names}`;
    document.title = `Concept: ${names} - MIFO console`;
    learning(main.querySelector("#learning .job-progress"), concept, stops, () =>
      load().catch(fail),
    );
    if (concept.status === "ready") showReady(main, concept, stops, fail);
  };
  load().catch(fail);
  return () => {
    stops.left = true;
    stops.list.forEach((stop) => stop());
  };
}

/** A ready concept: its attention maps, the composer and the results. The maps are what to
 * look at first: they unfold while the concept has no synthesis, and fold away once seen,
 * when the first synthesis is sent (on later visits they start folded); a click on their
 * summary opens them again. */
function showReady(main, concept, stops, fail) {
  const maps = main.querySelector("#attention");
  attention(maps, concept);
  const results = main.querySelector("#results");
  let sent = false;
  compose(main.querySelector("#compose"), concept, (job) => {
    if (!sent) maps.open = false;
    sent = true;
    addResult(results, job, stops, true);
  });
  listResults(results, concept, stops).then((count) => {
    if (count === 0 && !sent) maps.open = true;
  }, fail);
  evaluation(main.querySelector("#evaluation"), concept, stops, fail);
}

function learning(box, concept, stops, reload) {
  if (!concept.learn_job_id) {
    box.replaceChildren(el("p", { class: "hint" }, `Status: ${concept.status}`));
    return;
  }
  api(`v1/jobs/${concept.learn_job_id}`).then(
    (job) => {
      if (stops.left) return;
      let wasRunning = !isTerminal(job);
      stops.push(
        trackJob(box, job, () => {
          if (wasRunning) reload(); // now ready (or failed): show the maps and the composer
          wasRunning = false;
        }),
      );
    },
    (err) => box.replaceChildren(el("p", { class: "problem" }, problemText(err))),
  );
}

/** Token `t`'s share of attention inside another instance's mask, when reported. */
function leakage(concept, t) {
  const others = (concept.diagnostics[t.token] || {}).leakage_into_other_instances;
  return typeof others === "number" ? others : null;
}

/** The attention maps (folded or not: showReady decides), with a warning in their summary
 * naming the tokens that leak, so that it is seen folded too. */
function attention(section, concept) {
  const list = section.querySelector(".maps");
  list.replaceChildren(...concept.tokens.map((t, i) => mapCard(concept, t, i)));
  if (concept.inputs.image) {
    list.prepend(
      el(
        "li",
        { class: "map-card" },
        el("h4", {}, "Input image"),
        el("img", { src: concept.inputs.image, alt: "The input image", class: "attention-map" }),
      ),
    );
  }
  const leaking = concept.tokens.filter((t) => (leakage(concept, t) ?? 0) >= LEAK_WARN);
  section.querySelector(".leak-note").textContent = leaking.length
    ? `Warning: ${leaking.map((t) => t.token).join(", ")} may mix with another instance`
    : "";
  section.hidden = false;
}

function mapCard(concept, t, i) {
  const outside = (concept.diagnostics[t.token] || {}).leakage_outside_mask;
  const others = leakage(concept, t);
  const leaks = others !== null && others >= LEAK_WARN;
  return el(
    "li",
    {
      class: `map-card${leaks ? " leaks" : ""}`,
      style: `--colour: ${COLOURS[i % COLOURS.length]}`,
    },
    el("h4", {}, `${t.token} ${t.name}`),
    t.attention_map
      ? el("img", {
          src: t.attention_map,
          alt: `Attention map of ${t.token} (${t.name}) over the input image`,
          class: "attention-map",
        })
      : el("p", { class: "hint" }, "No attention map stored."),
    el(
      "dl",
      {},
      el("dt", {}, "Outside its mask"),
      el("dd", {}, typeof outside === "number" ? percent(outside) : "n/a"),
      el("dt", {}, "Inside other instances"),
      el("dd", {}, others !== null ? percent(others) : "n/a"),
    ),
    leaks
      ? el(
          "p",
          { class: "warning", role: "note" },
          `Warning: ${percent(others)} of ${t.token}'s attention falls on another instance; ` +
            "its images may mix the two. Learn longer or paint tighter masks.",
        )
      : null,
  );
}
