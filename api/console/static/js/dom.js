// Small DOM helpers shared by the views.

/** An element: el("a", {href: "#"}, "text", child). `on*` attributes become listeners. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    // `style` goes through the CSSOM, which the console's CSP allows
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const NO_FILE = "no file chosen";

/** Show the name of the file chosen in `input` (or "no file chosen") in the element the
 * input is described by: the browser's own text for it is cut short ("No ...osen"). */
export function showFileName(input) {
  const shown = document.getElementById(input.getAttribute("aria-describedby"));
  if (shown) shown.textContent = input.files?.[0]?.name || NO_FILE;
}

/**
 * A file input as a button and the chosen file's name. The input keeps the focus and its
 * name (`labelledBy`: the id of the field's label); the button is a label of it, which opens
 * the file chooser; `button`: its text; other attributes go to the input.
 */
export function filePicker(id, { labelledBy, button, ...attrs }) {
  const input = el("input", {
    id,
    type: "file",
    class: "file-input",
    "aria-labelledby": labelledBy,
    "aria-describedby": `${id}-chosen`,
    ...attrs,
  });
  input.addEventListener("change", () => showFileName(input));
  return el(
    "div",
    { class: "file-pick" },
    input,
    el("label", { for: id, class: "button file-button", "aria-hidden": "true" }, button),
    el("span", { id: `${id}-chosen`, class: "file-name" }, NO_FILE),
  );
}

export function view(id) {
  return document.getElementById(id).content.cloneNode(true);
}

/** The `[data-field]` box that shows a problem about `field`, or null. */
function slotFor(root, field) {
  if (!field) return null;
  const slots = [...root.querySelectorAll("[data-field]")];
  const exact = slots.find((s) => s.dataset.field === field);
  if (exact) return exact;
  // boxes.<asset0>[1] (request validation) and boxes[<asset0>] (the engine) name one box
  const box = field.match(/^boxes(?:\.|\[)([^\].[]+)/);
  if (box) {
    const one = slots.find((s) => s.dataset.field === `boxes[${box[1]}]`);
    if (one) return one;
  }
  const prefix = slots
    .filter((s) => field.startsWith(s.dataset.field))
    .sort((a, b) => b.dataset.field.length - a.dataset.field.length);
  // `names` where each name has its own slot (names[0], ...): the first of them
  return prefix[0] || slots.find((s) => s.dataset.field.startsWith(`${field}[`)) || null;
}

export function problemText(problem) {
  const fix = problem.fix ? ` Fix: ${problem.fix}.` : "";
  return `${problem.message}${fix}`.replace(/\.\./g, ".");
}

/**
 * Show a problem next to the field it names, else in the form's own line; the slot's
 * `[data-control]` (the control its field stands for) is marked aria-invalid.
 * Returns { control, line }: that control (or null) and the line showing the message.
 */
export function showProblem(root, problem) {
  clearProblems(root);
  const slot = slotFor(root, problem.field);
  const line =
    (slot && (slot.querySelector(":scope > .problem") || slot.querySelector(".problem"))) ||
    root.querySelector(".form-problem");
  if (!line) return null;
  line.textContent = problemText(problem);
  // a problem in a folded part of the page (<details>) unfolds it, so that it is seen
  for (let d = line.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
  if (slot) slot.classList.add("invalid");
  const control = slot && slot.querySelector("[data-control]");
  if (control) control.setAttribute("aria-invalid", "true");
  return { control, line };
}

/** showProblem, then the focus on its control; where there is none, or it cannot take the
 * focus (hidden, disabled), on the message itself, so that a screen reader reads it. */
export function reportProblem(root, problem) {
  const shown = showProblem(root, problem);
  if (!shown) return;
  shown.control?.focus();
  if (shown.control && document.activeElement === shown.control) return;
  shown.line.tabIndex = -1;
  shown.line.focus();
}

export function clearProblems(root) {
  for (const p of root.querySelectorAll(".problem")) p.textContent = "";
  for (const s of root.querySelectorAll(".invalid")) s.classList.remove("invalid");
  for (const i of root.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

export function percent(v) {
  return `${Math.round(v * 100)}%`;
}
