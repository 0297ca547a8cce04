// One concept: its learning job, attention maps and leakage, compose, and the results.

import { api, isTerminal } from "./api.js";
import { BoxEditor } from "./boxes.js";
import { clearProblems, el, percent, problemText, reportProblem, view, when } from "./dom.js";
import { COLOURS, centreSquare } from "./paint.js";
import { trackJob } from "./progress.js";

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
    learning(main.querySelector("#learning .job-progress"), concept, stops, () => load().catch(fail));
    if (concept.status === "ready") {
      attention(main.querySelector("#attention"), concept);
      const results = main.querySelector("#results");
      compose(main.querySelector("#compose"), concept, (job) => addResult(results, job, stops, true));
      listResults(results, concept, stops).catch(fail);
    }
  };
  load().catch(fail);
  return () => {
    stops.left = true;
    stops.list.forEach((stop) => stop());
  };
}

function learning(box, concept, stops, reload) {
  if (!concept.learn_job_id) {
    box.replaceChildren(el("p", { class: "hint" }, `Status: ${concept.status}`));
    return;
  }
  api(`v1/jobs/${concept.learn_job_id}`).then((job) => {
    if (stops.left) return;
    let wasRunning = !isTerminal(job);
    stops.push(trackJob(box, job, () => {
      if (wasRunning) reload(); // now ready (or failed): show the maps and the composer
      wasRunning = false;
    }));
  }, (err) => box.replaceChildren(el("p", { class: "problem" }, problemText(err))));
}

function attention(section, concept) {
  const list = section.querySelector(".maps");
  list.replaceChildren(...concept.tokens.map((t, i) => {
    const d = concept.diagnostics[t.token] || {};
    const outside = d.leakage_outside_mask;
    const others = d.leakage_into_other_instances;
    const leaks = typeof others === "number" && others >= LEAK_WARN;
    return el("li", { class: `map-card${leaks ? " leaks" : ""}`, style: `--colour: ${COLOURS[i % COLOURS.length]}` },
      el("h4", {}, `${t.token} ${t.name}`),
      t.attention_map
        ? el("img", { src: t.attention_map, alt: `Attention map of ${t.token} (${t.name}) over the input image`, class: "attention-map" })
        : el("p", { class: "hint" }, "No attention map stored."),
      el("dl", {},
        el("dt", {}, "Outside its mask"), el("dd", {}, typeof outside === "number" ? percent(outside) : "n/a"),
        el("dt", {}, "Inside other instances"), el("dd", {}, typeof others === "number" ? percent(others) : "n/a")),
      leaks ? el("p", { class: "warning", role: "note" },
        `Warning: ${percent(others)} of ${t.token}'s attention falls on another instance; ` +
        "its images may mix the two. Learn longer or paint tighter masks.") : null);
  }));
  if (concept.inputs.image) {
    list.prepend(el("li", { class: "map-card" }, el("h4", {}, "Input image"),
      el("img", { src: concept.inputs.image, alt: "The input image", class: "attention-map" })));
  }
  section.hidden = false;
}

function compose(section, concept, submitted) {
  const form = section.querySelector("#compose-form");
  const prompt = form.querySelector("#prompt");
  const tokens = concept.tokens.map((t, i) => ({ ...t, colour: COLOURS[i % COLOURS.length] }));
  const editor = new BoxEditor(form.querySelector("#box-canvas"), tokens, (token, box) => fill(token, box));
  const frame = new Image();
  frame.onload = () => editor.setBackground(squareOf(frame));
  if (concept.inputs.image) frame.src = concept.inputs.image;
  prompt.placeholder = `a photo of ${tokens.map((t) => t.token).join(" and ")}`;
  const chips = form.querySelector(".chips");
  const choice = form.querySelector(".box-choice");
  const fields = form.querySelector(".box-fields");
  for (const t of tokens) {
    chips.append(el("button", { type: "button", class: "chip", style: `--colour: ${t.colour}`,
      onclick: () => insert(prompt, t.token) }, `${t.token} ${t.name}`));
    choice.append(el("label", { class: "chip", style: `--colour: ${t.colour}` },
      el("input", { type: "radio", name: "box-token", value: t.token, checked: t === tokens[0],
        onchange: () => editor.select(t.token) }), ` ${t.token} ${t.name}`));
    const coords = ["x0", "y0", "x1", "y1"].map((c, k) => el("label", {},
      `${c} (${["left", "top", "right", "bottom"][k]})`,
      el("input", { type: "number", step: "0.01", "data-coord": String(k), inputmode: "decimal", "data-control": k === 0,
        oninput: () => editor.set(t.token, read(t.token)) })));
    fields.append(el("div", { class: "field box-field", "data-field": `boxes[${t.token}]`, "data-token": t.token },
      el("fieldset", { style: `--colour: ${t.colour}` }, el("legend", {}, `Box of ${t.token} ${t.name}`), ...coords,
        el("button", { type: "button", class: "quiet", onclick: () => { editor.set(t.token, null); fill(t.token, null); } },
          `Remove the box of ${t.token}`)),
      el("p", { class: "problem", role: "alert" })));
  }
  editor.onSelect = (token) => {
    for (const r of choice.querySelectorAll("input")) r.checked = r.value === token;
  };
  const inputs = (token) => [...fields.querySelector(`[data-token="${CSS.escape(token)}"]`).querySelectorAll("input")];
  function fill(token, box) {
    inputs(token).forEach((input, k) => { input.value = box ? String(box[k]) : ""; });
  }
  function read(token) {
    const values = inputs(token).map((i) => i.value.trim());
    return values.every((v) => v !== "") ? values.map(Number) : null;
  }
  /** A box with some of its four numbers typed: the first such token, or null. */
  const partial = () => tokens.find((t) => {
    const typed = inputs(t.token).filter((i) => i.value.trim() !== "").length;
    return typed > 0 && typed < 4;
  }) || null;
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearProblems(form);
    const half = partial();
    if (half) {
      reportProblem(form, { field: `boxes[${half.token}]`,
        message: `The box of ${half.token} has only some of x0, y0, x1, y1.`,
        fix: `give all four numbers, or press "Remove the box of ${half.token}"` });
      return;
    }
    const boxes = {};
    for (const t of tokens) {
      const box = read(t.token);
      if (box) boxes[t.token] = box;
    }
    const body = { prompt: prompt.value, boxes };
    for (const [name, sel] of [["seed", "#seed"], ["num_images", "#num-images"], ["steps", "#steps"]]) {
      const raw = form.querySelector(sel).value.trim();
      if (raw !== "") body[name] = Number(raw);
    }
    const button = form.querySelector("#synthesise");
    button.disabled = true;
    try {
      submitted(await api(`v1/concepts/${concept.id}/syntheses`, { method: "POST", json: body }));
    } catch (err) {
      reportProblem(form, err);
    } finally {
      button.disabled = false;
    }
  });
  section.hidden = false;
}

/** The centred square of `image` the engine keeps (the frame boxes are drawn on). */
function squareOf(image) {
  const { x, y, side } = centreSquare(image.naturalWidth, image.naturalHeight);
  const out = document.createElement("canvas");
  out.width = out.height = side;
  out.getContext("2d").drawImage(image, x, y, side, side, 0, 0, side, side);
  return out;
}

/** Put `token` at the cursor, with a space either side where needed. */
function insert(area, token) {
  const start = area.selectionStart ?? area.value.length;
  const end = area.selectionEnd ?? start;
  const before = area.value.slice(0, start);
  const after = area.value.slice(end);
  const text = `${before && !/\s$/.test(before) ? " " : ""}${token}${after && !/^\s/.test(after) ? " " : ""}`;
  area.value = before + text + after;
  const cursor = before.length + text.length;
  area.focus();
  area.setSelectionRange(cursor, cursor);
}

async function listResults(section, concept, stops) {
  const page = await api(`v1/concepts/${concept.id}/syntheses?limit=20`);
  if (stops.left) return;
  for (const job of page.data.reverse()) addResult(section, job, stops, true);
}

function addResult(section, job, stops, first) {
  const list = section.querySelector(".syntheses");
  const progress = el("div", { class: "job-progress" });
  const gallery = el("ul", { class: "gallery" });
  const item = el("li", { class: "synthesis", "data-job": job.id },
    el("h4", {}, `“${job.request?.prompt ?? ""}”`),
    el("p", { class: "hint" }, `Job ${job.id} · ${when(job.created_at)}`), progress, gallery);
  if (first) list.prepend(item);
  else list.append(item);
  section.hidden = false;
  stops.push(trackJob(progress, job, (done) => {
    if (done.status === "succeeded") {
      // the stream's last body may predate the result's links: read the job once more
      api(`v1/jobs/${done.id}`).then((full) => showImages(gallery, full));
    }
  }));
}

function showImages(gallery, job) {
  const result = job.result || {};
  if (result.expired_at) {
    gallery.replaceChildren(el("li", { class: "hint" }, `The images were deleted at ${when(result.expired_at)}.`));
    return;
  }
  gallery.replaceChildren(...(result.images || []).map((image) => {
    const preview = image.preview_url
      ? el("img", { src: image.preview_url, class: "preview", alt: `Layout preview of image ${image.index + 1}`, hidden: true })
      : null;
    const toggle = preview && el("button", { type: "button", "aria-pressed": "false", onclick: () => {
      const on = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(on));
      preview.hidden = !on;
    } }, "Show layout");
    const shares = image.in_box_share ?? image.diagnostics ?? {};
    return el("li", { class: "result" },
      el("figure", {},
        el("div", { class: "stack" },
          el("img", { src: image.url, alt: `Image ${image.index + 1} of “${job.request?.prompt ?? ""}”, seed ${image.seed}` }),
          preview),
        el("figcaption", {},
          el("span", {}, `Seed ${image.seed}`), toggle,
          el("ul", { class: "shares", "aria-label": "In-box share of each subject" },
            ...Object.entries(shares).map(([token, v]) => el("li", {},
              `${token}: ${percent(typeof v === "number" ? v : v.in_box_share)} in its box`))),
          image.url ? el("a", { href: image.url, download: `mifo-${job.id.slice(0, 8)}-${image.index}.png`, class: "download" },
            `Download image ${image.index + 1} (PNG)`) : null)));
  }));
}
