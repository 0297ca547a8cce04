// Compose a synthesis of a concept: the prompt with its token chips, one box per token on
// the frame (boxes.js) and in number fields, seed, count and steps; synthesise.

import { api } from "./api.js";
import { BoxEditor } from "./boxes.js";
import { clearProblems, el, reportProblem } from "./dom.js";
import { COLOURS, centreSquare } from "./paint.js";

/** Fill the compose `section` for `concept`; `submitted(job)` for each synthesis sent. */
export function compose(section, concept, submitted) {
  const form = section.querySelector("#compose-form");
  const prompt = form.querySelector("#prompt");
  const tokens = concept.tokens.map((t, i) => ({ ...t, colour: COLOURS[i % COLOURS.length] }));
  const fields = form.querySelector(".box-fields");
  const editor = new BoxEditor(form.querySelector("#box-canvas"), tokens, (token, box) =>
    fillBox(fields, token, box),
  );
  const frame = new Image();
  frame.onload = () => editor.setBackground(squareOf(frame));
  if (concept.inputs.image) frame.src = concept.inputs.image;
  prompt.placeholder = `a photo of ${tokens.map((t) => t.token).join(" and ")}`;
  const chips = form.querySelector(".chips");
  const choice = form.querySelector(".box-choice");
  for (const t of tokens) {
    const chip = { type: "button", class: "chip", style: `--colour: ${t.colour}` };
    chips.append(el("button", { ...chip, onclick: () => insert(prompt, t.token) }, label(t)));
    choice.append(
      el(
        "label",
        { class: "chip", style: `--colour: ${t.colour}` },
        el("input", {
          type: "radio",
          name: "box-token",
          value: t.token,
          checked: t === tokens[0],
          onchange: () => editor.select(t.token),
        }),
        ` ${label(t)}`,
      ),
    );
    fields.append(
      boxField(t, {
        input: () => editor.set(t.token, readBox(fields, t.token)),
        remove: () => {
          editor.set(t.token, null);
          fillBox(fields, t.token, null);
        },
      }),
    );
  }
  editor.onSelect = (token) => {
    for (const r of choice.querySelectorAll("input")) r.checked = r.value === token;
  };
  watchSubmit(form, concept, tokens, submitted);
  section.hidden = false;
}

const label = (t) => `${t.token} ${t.name}`;

/** Token `t`'s four number fields and its remove button; `on`: {input, remove}. */
function boxField(t, on) {
  const coords = ["x0", "y0", "x1", "y1"].map((c, k) =>
    el(
      "label",
      {},
      `${c} (${["left", "top", "right", "bottom"][k]})`,
      el("input", {
        type: "number",
        step: "0.01",
        "data-coord": String(k),
        inputmode: "decimal",
        "data-control": k === 0,
        oninput: on.input,
      }),
    ),
  );
  const remove = {
    type: "button",
    class: "quiet",
    "aria-label": `Remove the box of ${t.token}`,
    onclick: on.remove,
  };
  return el(
    "div",
    { class: "field box-field", "data-field": `boxes[${t.token}]`, "data-token": t.token },
    el(
      "fieldset",
      { style: `--colour: ${t.colour}` },
      el("legend", {}, `Box of ${label(t)}`),
      ...coords,
      el("button", remove, "Remove"),
    ),
    el("p", { class: "problem", role: "alert" }),
  );
}

const boxInputs = (fields, token) => [
  ...fields.querySelector(`[data-token="${CSS.escape(token)}"]`).querySelectorAll("input"),
];

function fillBox(fields, token, box) {
  boxInputs(fields, token).forEach((input, k) => {
    input.value = box ? String(box[k]) : "";
  });
}

/** The token's box as typed, or null unless all four numbers are there. */
function readBox(fields, token) {
  const values = boxInputs(fields, token).map((i) => i.value.trim());
  return values.every((v) => v !== "") ? values.map(Number) : null;
}

/** A box with some of its four numbers typed: the first such token, or null. */
function partialBox(fields, tokens) {
  return (
    tokens.find((t) => {
      const typed = boxInputs(fields, t.token).filter((i) => i.value.trim() !== "").length;
      return typed > 0 && typed < 4;
    }) || null
  );
}

/** On submit: POST the synthesis, unless a box is half typed; `submitted(job)` after. */
function watchSubmit(form, concept, tokens, submitted) {
  const fields = form.querySelector(".box-fields");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearProblems(form);
    const half = partialBox(fields, tokens);
    if (half) {
      reportProblem(form, {
        field: `boxes[${half.token}]`,
        message: `The box of ${half.token} has only some of x0, y0, x1, y1.`,
        fix: "give all four numbers, or press its Remove button",
      });
      return;
    }
    const body = synthesisBody(form, tokens);
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
}

/** The JSON body of POST /v1/concepts/{id}/syntheses, the numbers as typed. */
function synthesisBody(form, tokens) {
  const fields = form.querySelector(".box-fields");
  const boxes = {};
  for (const t of tokens) {
    const box = readBox(fields, t.token);
    if (box) boxes[t.token] = box;
  }
  const body = { prompt: form.querySelector("#prompt").value, boxes };
  for (const [name, sel] of [
    ["seed", "#seed"],
    ["num_images", "#num-images"],
    ["steps", "#steps"],
  ]) {
    const raw = form.querySelector(sel).value.trim();
    if (raw !== "") body[name] = Number(raw);
  }
  return body;
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
