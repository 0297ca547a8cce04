// Masks from clicks on the new-concept page: with the Click tool, a click on the image asks
// the service (POST /v1/segmentations with Prefer: wait) for the selected instance's mask,
// from every click made on it so far; Shift-click marks a spot that is not the instance, a
// drag draws a box around it. The answer lands in the instance's mask at once (Undo takes it
// back), ready for the brush. The image goes up with the first request; the later ones send
// its image_id, so the service's worker only decodes the new clicks. "Find instances" asks
// for the instances SAM finds by itself, to pick from. Public API only.

import { api, followJob, isTerminal } from "./api.js";
import { el, problemText } from "./dom.js";
import { imagePoint } from "./paint.js";

const WAIT = "wait=30"; // a click is answered within this, or followed like any job
const DRAG_PX = 4; // a press that moves further than this (screen pixels) draws a box
const MARK = 5; // radius of a click's mark, in screen pixels

export class ClickSegmenter {
  /** `painter`: the MaskPainter; `ui`: the page's elements (status, problem, accept, clear,
   * find, proposals); `image()`: the chosen image file. */
  constructor(painter, ui, image) {
    this.painter = painter;
    this.ui = ui;
    this.image = image;
    this.service = new Segmentations(image);
    this.clicks = newClicks(null);
    this.press = null; // the pointer press under way: {start, screen, box}
    [this.asked, this.sent, this.running] = [0, 0, false]; // prompts asked for, sent; busy
    painter.decorate = (ctx) => drawClicks(ctx, painter.canvas, this.clicks, this.press);
    for (const kind of ["down", "move", "up"]) {
      painter.canvas.addEventListener(`pointer${kind}`, (e) => this[kind](e));
    }
    ui.accept.addEventListener("click", () => this.accept());
    ui.clear.addEventListener("click", () => this.reset());
    ui.find.addEventListener("click", () => this.findInstances());
  }

  /** A new image: nothing stored for it yet, no clicks, no proposals. */
  newImage() {
    this.service.forget();
    this.ui.proposals.replaceChildren();
    this.reset();
  }

  active() {
    return this.painter.tool === "click" && this.painter.image && this.painter.layers.length;
  }

  down(e) {
    if (!this.active() || e.button !== 0) return;
    e.preventDefault();
    this.painter.canvas.setPointerCapture(e.pointerId);
    this.press = { start: imagePoint(this.painter.canvas, e), screen: [e.clientX, e.clientY] };
  }

  move(e) {
    if (!this.press) return;
    const [x, y] = this.press.screen;
    if (Math.hypot(e.clientX - x, e.clientY - y) < DRAG_PX && !this.press.box) return;
    this.press.box = boxOf(this.press.start, imagePoint(this.painter.canvas, e), this.painter);
    this.painter.render();
  }

  up(e) {
    const press = this.press;
    if (!press) return;
    this.press = null;
    const layer = this.painter.layers[this.painter.active];
    if (this.clicks.layer !== layer) this.clicks = newClicks(layer); // another instance
    if (press.box) this.clicks.box = press.box;
    else this.clicks.points.push([...pixel(press.start, this.painter), e.shiftKey ? 0 : 1]);
    this.painter.render();
    this.ask();
  }

  /** Send the clicks; one request at a time, the latest clicks winning. */
  async ask() {
    this.asked += 1;
    if (this.running) return;
    this.running = true;
    try {
      while (this.sent < this.asked) {
        this.sent = this.asked;
        const { layer, points, box } = this.clicks;
        const prompt = promptOf(points, box);
        const job = await this.segment({ prompts: JSON.stringify([prompt]) });
        const mask = job && job.result.segmentation.masks[0];
        if (mask) await this.place(layer, mask.url, `${countOf(points, box)}`, mask.score);
      }
    } finally {
      this.running = false;
    }
  }

  /** The finished segmentation job, or null (its problem shown). */
  async segment(fields) {
    this.say("Asking the service for the mask…");
    this.ui.problem.textContent = "";
    try {
      const job = await this.service.run(fields);
      if (job.status === "succeeded") return job;
      this.fail({ message: job.error ? job.error.message : `The segmentation was ${job.status}.` });
    } catch (err) {
      this.fail({ message: err.message, fix: err.fix, field: err.field });
    }
    return null;
  }

  /** Put the mask at `url` into `layer` (still an instance's), as an undoable change. */
  async place(layer, url, clicks, score) {
    const at = this.painter.layers.indexOf(layer);
    if (at < 0) return;
    try {
      this.painter.loadMask(at, await fetchMask(url));
    } catch (err) {
      this.fail({ message: `The mask could not be read: ${err.message}` });
      return;
    }
    this.say(`Mask of instance ${at + 1} from ${clicks} (SAM's score ${score.toFixed(2)}).`);
    this.ui.accept.disabled = this.ui.clear.disabled = false;
  }

  /** The mask is the instance's: the clicks end, the brush refines it. */
  accept() {
    this.reset();
    this.say("Mask accepted: refine it with the brush or the eraser, or click again.");
    const brush = document.querySelector("input[name=tool][value=brush]");
    brush.checked = true;
    brush.dispatchEvent(new Event("change", { bubbles: true }));
  }

  reset() {
    this.clicks = newClicks(null);
    this.ui.accept.disabled = this.ui.clear.disabled = true;
    this.painter.render();
  }

  /** The instances SAM finds by itself, listed to pick one for the selected instance. */
  async findInstances() {
    if (!this.image()) {
      this.fail({ message: "No image chosen.", fix: "choose the image first" });
      return;
    }
    this.ui.find.disabled = true;
    try {
      const job = await this.segment({ mode: "proposals" });
      if (!job) return;
      const found = job.result.segmentation.candidates;
      const pick = (c) =>
        this.place(this.painter.layers[this.painter.active], c.url, "a pick", c.score);
      this.ui.proposals.replaceChildren(...found.map((c, i) => proposalItem(c, i, pick)));
      this.say(proposalsText(found.length));
    } finally {
      this.ui.find.disabled = false;
    }
  }

  say(text) {
    this.ui.status.textContent = text;
  }

  fail(problem) {
    this.say("");
    const where = problem.field ? `${problem.field}: ` : "";
    this.ui.problem.textContent = where + problemText(problem);
  }
}

/** The service's side: one image, sent with the first request, then named by its id. */
class Segmentations {
  constructor(image) {
    this.image = image; // () => the chosen file
    this.imageId = null; // the stored image, once the service answered about it
    this.chosen = 0; // images chosen so far: an answer about an earlier one is not kept
  }

  forget() {
    this.imageId = null;
    this.chosen += 1;
  }

  /** POST the fields with the stored image's id (or the image, the first time): the job once
   * it ended. */
  async run(fields) {
    const chosen = this.chosen;
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    if (this.imageId) form.append("image_id", this.imageId);
    else form.append("image", this.image(), this.image().name);
    let job;
    try {
      job = await api("v1/segmentations", { method: "POST", form, prefer: WAIT });
    } catch (err) {
      if (!(this.imageId && err.status === 404 && err.field === "image_id")) throw err;
      this.imageId = null; // removed since (retention): send the image again
      return this.run(fields);
    }
    if (!isTerminal(job)) job = await finished(job);
    if (chosen !== this.chosen) throw new Error("another image was chosen meanwhile");
    if (job.result && job.result.segmentation) this.imageId = job.result.segmentation.image_id;
    return job;
  }
}

function proposalsText(n) {
  if (!n) return "No instances found: click on them instead.";
  return `${n} instances found, best first: pick one for the selected instance.`;
}

function newClicks(layer) {
  return { layer, points: [], box: null }; // points: [x, y, label]
}

function promptOf(points, box) {
  const prompt = {};
  if (points.length) {
    prompt.points = points.map(([x, y]) => [x, y]);
    prompt.labels = points.map((p) => p[2]);
  }
  if (box) prompt.box = box;
  return prompt;
}

function countOf(points, box) {
  const n = points.length + (box ? 1 : 0);
  return n === 1 ? "1 click" : `${n} clicks`;
}

/** A point in whole image pixels, inside the image. */
function pixel(p, painter) {
  const { width, height } = painter.canvas;
  const clamp = (v, max) => Math.min(Math.max(Math.floor(v), 0), max - 1);
  return [clamp(p.x, width), clamp(p.y, height)];
}

/** The box between two points, in whole pixels inside the image; x1 > x0, y1 > y0. */
function boxOf(a, b, painter) {
  const { width, height } = painter.canvas;
  const x = [a.x, b.x]
    .map((v) => Math.min(Math.max(Math.round(v), 0), width))
    .sort((m, n) => m - n);
  const y = [a.y, b.y]
    .map((v) => Math.min(Math.max(Math.round(v), 0), height))
    .sort((m, n) => m - n);
  return [x[0], y[0], Math.max(x[1], x[0] + 1), Math.max(y[1], y[0] + 1)];
}

/** The job once it ended: followed as any job (its events, else polling). */
function finished(job) {
  return new Promise((resolve, reject) => {
    followJob(
      job.id,
      (j) => isTerminal(j) && resolve(j),
      () => reject(new Error("The segmentation was deleted.")),
      reject,
    );
  });
}

/** A mask PNG as a bitmap: an image element, so that a presigned storage link works too. */
function fetchMask(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.crossOrigin = "anonymous"; // its pixels are read: storage must allow this origin
    img.onload = () => createImageBitmap(img).then(resolve, reject);
    img.onerror = () => reject(new Error("the mask did not load"));
    img.src = url;
  });
}

function proposalItem(candidate, i, pick) {
  const label = `Candidate ${i + 1}, score ${candidate.score.toFixed(2)}`;
  return el(
    "li",
    {},
    el(
      "button",
      { type: "button", class: "proposal quiet", onclick: () => pick(candidate) },
      el("img", { src: candidate.url, alt: "", width: 64, height: 64 }),
      label,
    ),
  );
}

/** The clicks (a dot: include; a cross: exclude) and the box of the instance clicked on, and
 * the box being drawn, over the scene. */
function drawClicks(ctx, canvas, clicks, press) {
  const scale = canvas.width / (canvas.clientWidth || canvas.width);
  const r = MARK * scale;
  ctx.save();
  ctx.lineWidth = 2 * scale;
  for (const [x, y, label] of clicks.points) {
    ctx.beginPath();
    ctx.strokeStyle = "#fff";
    if (label) {
      ctx.fillStyle = "#1a9d3a";
      ctx.arc(x + 0.5, y + 0.5, r, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
    } else {
      ctx.strokeStyle = "#d11";
      ctx.moveTo(x - r, y - r);
      ctx.lineTo(x + r, y + r);
      ctx.moveTo(x - r, y + r);
      ctx.lineTo(x + r, y - r);
      ctx.stroke();
    }
  }
  for (const box of [clicks.box, press && press.box]) {
    if (!box) continue;
    ctx.setLineDash([6 * scale, 4 * scale]);
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  ctx.restore();
}
