// New concept: the image, one painted or uploaded mask per instance, names, options; learn.

import { api } from "./api.js";
import { clearProblems, el, reportProblem, showProblem, view } from "./dom.js";
import { COLOURS, MaskPainter, maskSizeProblem } from "./paint.js";

// `quick` runs in seconds on the built-in tiny model; `paper` sends no overrides.
export const PRESETS = {
  quick: { phase1_steps: 4, phase2_steps: 2, reward_steps: 1, diagnostic_timesteps: [100] },
  paper: {},
};

export function showNew(main) {
  main.append(view("view-new"));
  const form = main.querySelector("#new-form");
  const canvas = main.querySelector("#paint-canvas");
  const list = main.querySelector("#instances");
  const painter = new MaskPainter(canvas, () => updateCounts());
  let imageFile = null;
  canvas.hidden = true;

  const rows = () => [...list.children];
  function updateCounts() {
    rows().forEach((row, i) => {
      const share = painter.image ? painter.coverage(i) : 0;
      row.querySelector(".coverage").textContent = share ? `${(share * 100).toFixed(1)}% of the image` : "empty";
    });
  }
  function select(i) {
    painter.active = i;
    rows().forEach((row, j) => {
      row.querySelector("input[type=radio]").checked = i === j;
      row.classList.toggle("active", i === j);
    });
    painter.render();
  }
  function renumber() {
    rows().forEach((row, i) => {
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
  function addInstance() {
    const i = painter.addLayer();
    const id = `inst-${Date.now()}-${i}`;
    const radio = el("input", { type: "radio", name: "active-instance", onchange: () => select(rows().indexOf(row)) });
    const upload = el("input", { id: `${id}-mask`, type: "file", accept: "image/*", "data-control": true, onchange: async () => {
      const file = upload.files[0];
      const at = rows().indexOf(row);
      if (!file) return;
      if (!painter.image) {
        upload.value = "";
        showProblem(form, { field: `masks[${at}]`, message: "No image chosen yet.", fix: "choose the image first, then its masks" });
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
        upload.value = "";
        showProblem(form, { field: `masks[${at}]`, message: size, fix: "upload a mask of the image's own size" });
        return;
      }
      try {
        if (!bitmap) throw new Error("unreadable");
        painter.loadMask(at, bitmap);
        clearProblems(form);
      } catch {
        showProblem(form, { field: `masks[${at}]`, message: "This mask file is not an image the browser can read.", fix: "choose a PNG, JPEG or WebP file" });
      }
    } });
    // one slot for the name's problems, one for the mask's, each beside its own control
    const row = el("li", { class: "instance" },
      el("label", { class: "paint-label" }, radio, el("span", { class: "swatch", "aria-hidden": "true" }), " "),
      el("div", { class: "slot name-slot" },
        el("label", { class: "name-label", for: `${id}-name` }),
        el("input", { id: `${id}-name`, class: "name", type: "text", value: `instance ${i + 1}`, autocomplete: "off",
          "data-control": true }),
        el("p", { class: "problem", role: "alert" })),
      el("div", { class: "slot mask-slot" },
        el("label", { class: "mask-label", for: `${id}-mask` }), upload,
        el("p", { class: "problem", role: "alert" })),
      el("span", { class: "coverage hint" }, "empty"),
      el("button", { type: "button", class: "remove quiet", onclick: () => {
        if (rows().length <= 1) return;
        const k = rows().indexOf(row);
        painter.removeLayer(k);
        row.remove();
        renumber();
        select(Math.min(k, rows().length - 1));
      } }, "Remove"));
    list.append(row);
    renumber();
    select(i);
    updateCounts();
  }

  main.querySelector("#image-input").addEventListener("change", async (e) => {
    const file = e.target.files[0] || null;
    if (!file) return;
    try {
      painter.setImage(await createImageBitmap(file));
      imageFile = file; // only once it reads: a bad file leaves the previous image in use
      clearProblems(form);
    } catch {
      showProblem(form, { field: "image", message: "This file is not an image the browser can read.", fix: "choose a PNG, JPEG or WebP file" });
      return;
    }
    canvas.hidden = false;
    main.querySelector("#paint-empty").hidden = true;
    updateCounts();
  });
  for (const r of main.querySelectorAll("input[name=tool]")) {
    r.addEventListener("change", () => { painter.tool = r.value; });
  }
  const size = main.querySelector("#brush-size");
  size.addEventListener("input", () => {
    painter.size = Number(size.value);
    main.querySelector("#brush-size-value").textContent = size.value;
  });
  main.querySelector("#undo").addEventListener("click", () => painter.undoLast());
  main.querySelector("#add-instance").addEventListener("click", addInstance);

  const preset = main.querySelector("#preset");
  const options = main.querySelector("#options");
  const applyPreset = () => {
    if (preset.value in PRESETS) options.value = JSON.stringify(PRESETS[preset.value], null, 1);
  };
  preset.addEventListener("change", applyPreset);
  options.addEventListener("input", () => { preset.value = "custom"; });
  applyPreset();
  addInstance();

  const button = main.querySelector("#learn");
  let busy = false; // set before the first await: a second submit meanwhile is ignored
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    clearProblems(form);
    const local = check(imageFile, rows(), painter, options.value);
    if (local) {
      reportProblem(form, local);
      return;
    }
    busy = true;
    button.disabled = true;
    try {
      const body = new FormData();
      body.append("image", imageFile, imageFile.name);
      for (let i = 0; i < rows().length; i += 1) {
        body.append("masks", await painter.toBlob(i), `mask${i}.png`);
      }
      body.append("names", rows().map((r) => r.querySelector(".name").value.trim()).join(","));
      if (options.value.trim() && options.value.trim() !== "{}") body.append("options", options.value);
      const made = await api("v1/concepts", { method: "POST", form: body });
      location.hash = `#/concepts/${made.concept.id}`;
    } catch (err) {
      reportProblem(form, err);
    } finally {
      busy = false;
      button.disabled = false;
    }
  });
}

/** What the API would refuse anyway, said before uploading; null when all is there. */
function check(image, rows, painter, options) {
  if (!image) return { field: "image", message: "No image chosen.", fix: "choose the scene's image file" };
  const empty = rows.findIndex((_, i) => painter.coverage(i) === 0);
  if (empty >= 0) {
    return { field: `masks[${empty}]`, message: `The mask of instance ${empty + 1} is empty.`,
      fix: "paint the instance, upload its mask file, or remove it" };
  }
  const unnamed = rows.findIndex((r) => !r.querySelector(".name").value.trim());
  if (unnamed >= 0) {
    return { field: `names[${unnamed}]`, message: `Instance ${unnamed + 1} has no name.`, fix: "name every instance" };
  }
  const comma = rows.findIndex((r) => r.querySelector(".name").value.includes(","));
  if (comma >= 0) {
    return { field: `names[${comma}]`, message: `The name of instance ${comma + 1} has a comma, which separates names.`,
      fix: "leave the comma out" };
  }
  try {
    const parsed = options.trim() ? JSON.parse(options) : {};
    if (typeof parsed !== "object" || Array.isArray(parsed) || parsed === null) throw new Error("not an object");
  } catch (err) {
    return { field: "options", message: `Options are not a JSON object (${err.message}).`, fix: 'write e.g. {"phase1_steps": 100}' };
  }
  return null;
}
