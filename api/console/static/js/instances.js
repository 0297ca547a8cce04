// The new-concept view's instances: one row per mask, with its paint selector, name, mask
// file and remove button; the painter holds the masks in the rows' order.

import { clearProblems, el, filePicker, showFileName, showProblem } from "./dom.js";
import { maskSizeProblem } from "./masks.js";
import { COLOURS } from "./paint.js";

export class InstanceList {
  /** `list`: the <ol> of rows; `form`: where a mask file's problem is shown. */
  constructor(list, painter, form) {
    this.list = list;
    this.painter = painter;
    this.form = form;
  }

  rows() {
    return [...this.list.children];
  }

  /** A new row with an empty mask, selected for painting. */
  add() {
    const i = this.painter.addLayer();
    const row = instanceRow(`inst-${Date.now()}-${i}`, i, {
      select: () => this.select(this.rows().indexOf(row)),
      upload: (input) => uploadMask(input, this.rows().indexOf(row), this.painter, this.form),
      remove: () => this.remove(row),
    });
    this.list.append(row);
    this.renumber();
    this.select(i);
    this.updateCounts();
  }

  remove(row) {
    if (this.rows().length <= 1) return;
    const k = this.rows().indexOf(row);
    this.painter.removeLayer(k);
    row.remove();
    this.renumber();
    this.select(Math.min(k, this.rows().length - 1));
  }

  select(i) {
    this.painter.active = i;
    this.rows().forEach((row, j) => {
      row.querySelector("input[type=radio]").checked = i === j;
      row.classList.toggle("active", i === j);
    });
    this.painter.render();
  }

  /** Each row's share of the image, after a change to its mask; a problem said of a mask
   * goes once the mask changed (it was said of the mask as it was). */
  updateCounts() {
    this.rows().forEach((row, i) => {
      const share = this.painter.image ? this.painter.coverage(i) : 0;
      row.querySelector(".coverage").textContent = share
        ? `${(share * 100).toFixed(1)}% of the image`
        : "empty";
      const slot = row.querySelector(".mask-slot");
      if (share && slot.classList.contains("invalid")) {
        clearProblems(slot);
        slot.classList.remove("invalid");
      }
    });
  }

  /** Each row's colour, labels and problem slots by its place, after an add or remove. */
  renumber() {
    this.rows().forEach((row, i) => {
      const n = i + 1;
      row.style.setProperty("--colour", COLOURS[i % COLOURS.length]);
      row.querySelector(".paint-label").lastChild.textContent = ` Paint instance ${n}`;
      row.querySelector(".name-label").textContent = `Name of instance ${n}`;
      row.querySelector(".mask-label").textContent = `Mask file for instance ${n}`;
      row.querySelector(".remove").setAttribute("aria-label", `Remove instance ${n}`);
      row.querySelector(".name-slot").dataset.field = `names[${i}]`;
      row.querySelector(".mask-slot").dataset.field = `masks[${i}]`;
    });
  }
}

/** The row of instance `i` (its labels come from renumber); `on`: {select, upload, remove}. */
function instanceRow(id, i, on) {
  const radio = el("input", { type: "radio", name: "active-instance", onchange: on.select });
  const upload = filePicker(`${id}-mask`, {
    labelledBy: `${id}-mask-label`,
    button: "Choose mask file…",
    accept: "image/*",
    "data-control": true,
    onchange: (e) => on.upload(e.target),
  });
  const name = el("input", {
    id: `${id}-name`,
    class: "name",
    type: "text",
    value: `instance ${i + 1}`,
    autocomplete: "off",
    "data-control": true,
  });
  const remove = { type: "button", class: "remove quiet", onclick: on.remove };
  // one slot for the name's problems, one for the mask's, each beside its own control
  return el(
    "li",
    { class: "instance" },
    el(
      "label",
      { class: "paint-label" },
      radio,
      el("span", { class: "swatch", "aria-hidden": "true" }),
      " ",
    ),
    el(
      "div",
      { class: "slot name-slot" },
      el("label", { class: "name-label", for: `${id}-name` }),
      name,
      el("p", { class: "problem", role: "alert" }),
    ),
    el(
      "div",
      { class: "slot mask-slot" },
      el("label", { class: "mask-label", id: `${id}-mask-label`, for: `${id}-mask` }),
      upload,
      el("p", { class: "problem", role: "alert" }),
    ),
    el("span", { class: "coverage hint" }, "empty"),
    el("button", remove, "Remove"),
  );
}

/** Read the file chosen in `upload` as mask `at`, or show why it cannot be one. */
async function uploadMask(upload, at, painter, form) {
  const file = upload.files[0];
  if (!file) return;
  // a refused file is not kept: the field says "no file chosen" again
  const refuse = (message, fix) => {
    upload.value = "";
    showFileName(upload);
    showProblem(form, { field: `masks[${at}]`, message, fix });
  };
  if (!painter.image) {
    refuse("No image chosen yet.", "choose the image first, then its masks");
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    bitmap = null;
  }
  const size = bitmap && maskSizeProblem(bitmap, painter.canvas.width, painter.canvas.height);
  if (size) {
    refuse(size, "upload a mask of the image's own size");
    return;
  }
  try {
    if (!bitmap) throw new Error("unreadable");
    painter.loadMask(at, bitmap);
    clearProblems(form);
  } catch {
    refuse(
      "This mask file is not an image the browser can read.",
      "choose a PNG, JPEG or WebP file",
    );
  }
}
