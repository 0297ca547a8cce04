// New concept: the learning options, as the few fields a person chooses (the preset, the steps
// of each phase, the adaptation, the seed) and, under "Advanced", as the JSON object of
// LearnConfig fields that is sent. The two are kept in step both ways: a field edited
// rewrites the JSON, the JSON edited fills the fields.

import { problemText } from "./dom.js";

// `quick` runs in seconds on the built-in tiny model; `paper` sends no overrides.
export const PRESETS = {
  quick: { phase1_steps: 4, phase2_steps: 2, reward_steps: 1, diagnostic_timesteps: [100] },
  paper: {},
};

/** The options text parsed: {value} (an object), or {problem} as the API would name it. */
export function parseOptions(text) {
  let value;
  try {
    value = text.trim() ? JSON.parse(text) : {};
    if (typeof value !== "object" || Array.isArray(value) || value === null) {
      throw new Error("not an object");
    }
  } catch (err) {
    const problem = {
      field: "options",
      message: `Options are not a JSON object (${err.message}).`,
      fix: 'write e.g. {"phase1_steps": 100}, or choose a preset',
    };
    return { problem };
  }
  return { value };
}

/** The adaptation (phase 2) that `options` ask for: "lora" (the default), "full" or "none". */
export function adaptationOf(options) {
  if (options.phase2 === false) return "none";
  return options.phase2_mode === "full" ? "full" : "lora";
}

/** Set the adaptation in `options`: the engine's defaults are left out, as the presets do. */
function setAdaptation(options, adaptation) {
  delete options.phase2;
  delete options.phase2_mode;
  if (adaptation === "full") options.phase2_mode = "full";
  if (adaptation === "none") options.phase2 = false;
}

/** Set a number field from its input: emptied, the field is left out (its default applies);
 * a number half typed (the browser cannot read it yet) changes nothing. */
function setNumber(options, input) {
  if (input.validity.badInput) return;
  const raw = input.value.trim();
  if (raw === "") delete options[input.dataset.option];
  else options[input.dataset.option] = Number(raw);
}

/** The preset whose options these are, else "custom". */
function presetOf(options) {
  const same = (a, b) => canonical(a) === canonical(b);
  return Object.keys(PRESETS).find((name) => same(PRESETS[name], options)) || "custom";
}

function canonical(value) {
  if (typeof value !== "object" || value === null) return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
}

/**
 * Wire the options in `root`: #preset, the fields (`input[data-option]`, #adaptation) and the
 * JSON (#options, in its `[data-field="options"]` slot). Returns the JSON's textarea, whose
 * value is what is sent.
 */
export function watchOptions(root) {
  const ui = {
    preset: root.querySelector("#preset"),
    adaptation: root.querySelector("#adaptation"),
    numbers: [...root.querySelectorAll("input[data-option]")],
    json: root.querySelector("#options"),
    slot: root.querySelector('[data-field="options"]'),
  };
  const write = (options) => {
    ui.json.value = JSON.stringify(options, null, 1);
    ui.preset.value = presetOf(options);
    jsonProblem(ui, null);
  };
  ui.preset.addEventListener("change", () => {
    if (ui.preset.value in PRESETS) {
      write(PRESETS[ui.preset.value]);
      fillFields(ui, PRESETS[ui.preset.value]);
    } else {
      root.querySelector("#advanced-options").open = true; // custom: the JSON is the place
    }
  });
  const edit = (change) => {
    const { value } = parseOptions(ui.json.value);
    if (!value) return; // the fields are disabled while the JSON does not read
    change(value);
    write(value);
  };
  for (const input of ui.numbers) {
    input.addEventListener("input", () => edit((o) => setNumber(o, input)));
  }
  ui.adaptation.addEventListener("change", () =>
    edit((o) => setAdaptation(o, ui.adaptation.value)),
  );
  ui.json.addEventListener("input", () => readJson(ui));
  ui.preset.value = "quick";
  write(PRESETS.quick);
  fillFields(ui, PRESETS.quick);
  return ui.json;
}

/** The JSON as edited: the fields follow it, or, while it does not read, say so at the JSON
 * and wait (disabled) for it to read again. */
function readJson(ui) {
  const { value, problem } = parseOptions(ui.json.value);
  jsonProblem(ui, problem);
  for (const control of [...ui.numbers, ui.adaptation]) control.disabled = Boolean(problem);
  if (problem) {
    ui.preset.value = "custom";
    return;
  }
  fillFields(ui, value);
  ui.preset.value = presetOf(value);
}

/** Each field shows its option's value; one the options leave out is empty, showing its
 * default (the placeholder). */
function fillFields(ui, options) {
  for (const input of ui.numbers) {
    const v = options[input.dataset.option];
    input.value = typeof v === "number" ? String(v) : "";
    input.disabled = false;
  }
  ui.adaptation.value = adaptationOf(options);
  ui.adaptation.disabled = false;
}

/** Show `problem` at the JSON (null: clear it), leaving the rest of the form's problems. */
function jsonProblem(ui, problem) {
  const line = ui.slot.querySelector(".problem");
  line.textContent = problem ? problemText(problem) : "";
  ui.slot.classList.toggle("invalid", Boolean(problem));
  if (problem) ui.json.setAttribute("aria-invalid", "true");
  else ui.json.removeAttribute("aria-invalid");
}
