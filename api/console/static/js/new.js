// New concept: the image, one painted or uploaded mask per instance, names, options; learn.
// The instance rows are in instances.js, the painter in paint.js, the options in
// learn-options.js.

import { api } from "./api.js";
import { clearProblems, reportProblem, showFileName, showProblem, view } from "./dom.js";
import { InstanceList } from "./instances.js";
import { parseOptions, watchOptions } from "./learn-options.js";
import { MaskPainter } from "./paint.js";
import { ClickSegmenter } from "./segment.js";

export function showNew(main) {
  main.append(view("view-new"));
  const form = main.querySelector("#new-form");
  const canvas = main.querySelector("#paint-canvas");
  const painter = new MaskPainter(canvas, () => instances.updateCounts());
  const instances = new InstanceList(main.querySelector("#instances"), painter, form);
  const chosen = { image: null }; // the image file, once it reads
  const clicks = new ClickSegmenter(painter, segmentUi(main), () => chosen.image);
  canvas.hidden = true;
  watchImage(main, form, painter, (file) => {
    chosen.image = file;
    clicks.newImage();
    instances.updateCounts();
  });
  watchTools(main, painter);
  main.querySelector("#add-instance").addEventListener("click", () => instances.add());
  const options = watchOptions(main);
  instances.add();
  watchSubmit(
    form,
    main.querySelector("#learn"),
    () => check(chosen.image, instances.rows(), painter, options.value),
    () => conceptBody(chosen.image, () => instances.rows(), painter, options.value),
  );
}

/** Show a chosen image in the painter, then `onImage(file)`; a file that does not read
 * leaves the previous image in use. */
function watchImage(main, form, painter, onImage) {
  const input = main.querySelector("#image-input");
  let inUse = null;
  input.addEventListener("change", async () => {
    const file = input.files[0] || null;
    if (!file) return;
    try {
      painter.setImage(await createImageBitmap(file));
    } catch {
      keepFile(input, inUse);
      showProblem(form, {
        field: "image",
        message: "This file is not an image the browser can read.",
        fix: "choose a PNG, JPEG or WebP file",
      });
      return;
    }
    clearProblems(form);
    painter.canvas.hidden = false;
    main.querySelector("#paint-empty").hidden = true;
    inUse = file;
    onImage(file);
  });
  input.addEventListener("change", () => showFileName(input));
}

/** The elements of "Masks from clicks" (segment.js). */
function segmentUi(main) {
  const at = (id) => main.querySelector(`#${id}`);
  return {
    status: at("segment-status"),
    problem: at("segment-problem"),
    accept: at("accept-mask"),
    clear: at("clear-clicks"),
    find: at("find-instances"),
    proposals: at("proposals"),
  };
}

/** Put `file` back in `input` (none: empty it), with its name shown. */
function keepFile(input, file) {
  const kept = new DataTransfer();
  if (file) kept.items.add(file);
  input.files = kept.files;
  showFileName(input);
}

/** The tool choice, the brush size and undo. */
function watchTools(main, painter) {
  for (const r of main.querySelectorAll("input[name=tool]")) {
    r.addEventListener("change", () => {
      painter.tool = r.value;
    });
  }
  const size = main.querySelector("#brush-size");
  size.addEventListener("input", () => {
    painter.size = Number(size.value);
    main.querySelector("#brush-size-value").textContent = size.value;
  });
  main.querySelector("#undo").addEventListener("click", () => painter.undoLast());
}

/** On submit: the page's own `problem()` if there is one, else `body()` sent as a new
 * concept, which then opens; one submit at a time. */
function watchSubmit(form, button, problem, body) {
  let busy = false; // set before the first await: a second submit meanwhile is ignored
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy) return;
    clearProblems(form);
    const local = problem();
    if (local) {
      reportProblem(form, local);
      return;
    }
    busy = true;
    button.disabled = true;
    try {
      const made = await api("v1/concepts", { method: "POST", form: await body() });
      location.hash = `#/concepts/${made.concept.id}`;
    } catch (err) {
      reportProblem(form, err);
    } finally {
      busy = false;
      button.disabled = false;
    }
  });
}

/** The multipart body of POST /v1/concepts: image, masks, names, options. */
async function conceptBody(imageFile, rows, painter, options) {
  const body = new FormData();
  body.append("image", imageFile, imageFile.name);
  for (let i = 0; i < rows().length; i += 1) {
    body.append("masks", await painter.toBlob(i), `mask${i}.png`);
  }
  body.append(
    "names",
    rows()
      .map((r) => r.querySelector(".name").value.trim())
      .join(","),
  );
  if (options.trim() && options.trim() !== "{}") body.append("options", options);
  return body;
}

/** What the API would refuse anyway, said before uploading; null when all is there. */
function check(image, rows, painter, options) {
  if (!image) {
    return { field: "image", message: "No image chosen.", fix: "choose the scene's image file" };
  }
  const empty = rows.findIndex((_, i) => painter.coverage(i) === 0);
  if (empty >= 0) {
    return {
      field: `masks[${empty}]`,
      message: `The mask of instance ${empty + 1} is empty.`,
      fix: "paint the instance, upload its mask file, or remove it",
    };
  }
  const unnamed = rows.findIndex((r) => !r.querySelector(".name").value.trim());
  if (unnamed >= 0) {
    return {
      field: `names[${unnamed}]`,
      message: `Instance ${unnamed + 1} has no name.`,
      fix: "name every instance",
    };
  }
  const comma = rows.findIndex((r) => r.querySelector(".name").value.includes(","));
  if (comma >= 0) {
    return {
      field: `names[${comma}]`,
      message: `The name of instance ${comma + 1} has a comma, which separates names.`,
      fix: "leave the comma out",
    };
  }
  return parseOptions(options).problem || null;
}
