// Painting one mask per instance over the scene: brush, eraser, fill, brush size, undo.
// The pixel work is in masks.js, the undo history in paint-history.js.

import { brushLine, coverage, floodFill, maskPng, maskSizeProblem, readMask } from "./masks.js";
import { PaintHistory } from "./paint-history.js";

const UNDO_DEPTH = 30;
// The tools the painter runs itself; another (segment.js's Click) has listeners of its own.
const TOOLS = new Set(["brush", "eraser", "fill"]);

/** Instance colours, shared by the masks, the boxes and the chips: the palette of the
 * engine's layout preview (mifo_engine/render.py, PALETTE), taken in token order by both. */
export const COLOURS = [
  "#e63c3c",
  "#2878e6",
  "#28aa46",
  "#f0a014",
  "#a03cc8",
  "#14aaaa",
  "#c85a8c",
  "#787878",
];

/** The centred square (x, y, side) the engine keeps of a width x height image. */
export function centreSquare(width, height) {
  const side = Math.min(width, height);
  return { x: Math.floor((width - side) / 2), y: Math.floor((height - side) / 2), side };
}

export class MaskPainter {
  /** `canvas`: the visible canvas; `onChange()` after every stroke, fill or undo. */
  constructor(canvas, onChange = () => {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange;
    this.image = null;
    this.layers = []; // one canvas per instance, at the image's own size; alpha = mask
    this.active = 0;
    this.tool = "brush";
    this.size = 12;
    this.history = new PaintHistory(UNDO_DEPTH);
    this.drawing = null;
    this.decorate = null; // (ctx) => draws over the scene after each render, if set
    this.tint = document.createElement("canvas"); // reused: render runs per move
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  // The masks: one layer per instance, at the image's size.

  setImage(bitmap) {
    this.image = bitmap;
    this.canvas.width = bitmap.width;
    this.canvas.height = bitmap.height;
    for (const layer of this.layers) this.resize(layer);
    this.history.clear();
    this.render();
  }

  resize(layer) {
    layer.width = this.canvas.width;
    layer.height = this.canvas.height;
  }

  addLayer() {
    const layer = document.createElement("canvas");
    this.resize(layer);
    this.layers.push(layer);
    this.render();
    return this.layers.length - 1;
  }

  removeLayer(index) {
    this.layers.splice(index, 1);
    this.history.removeLayer(index);
    this.active = Math.min(this.active, this.layers.length - 1);
    this.render();
  }

  /** Share of the image's pixels in mask `index` (0 when nothing is painted). */
  coverage(index) {
    return coverage(this.layers[index], this.canvas.width, this.canvas.height);
  }

  /** Mask `index` as a PNG: white on black, the image's size. */
  toBlob(index) {
    return maskPng(this.layers[index], this.canvas.width, this.canvas.height);
  }

  /** Replace mask `index` by an uploaded mask image of the image's size, read as the
   * engine reads it (masks.js, maskBits); the caller checks the size (maskSizeProblem). */
  loadMask(index, bitmap) {
    const { width, height } = this.canvas;
    const problem = maskSizeProblem(bitmap, width, height);
    if (problem) throw new Error(problem);
    this.remember(index);
    this.layers[index].getContext("2d").putImageData(readMask(bitmap, width, height), 0, 0);
    this.changed();
  }

  // Undo: each stroke, fill or upload keeps the mask's pixels as they were.

  pixels(index) {
    const { width, height } = this.canvas;
    return this.layers[index].getContext("2d").getImageData(0, 0, width, height);
  }

  remember(index) {
    this.history.push(index, this.pixels(index));
  }

  undoLast() {
    const last = this.history.pop();
    if (!last) return false;
    this.layers[last.layer].getContext("2d").putImageData(last.pixels, 0, 0);
    this.changed();
    return true;
  }

  changed() {
    this.render();
    this.onChange();
  }

  // The tools: a press fills, or starts a brush or eraser stroke that follows the pointer.

  down(e) {
    if (!this.image || !this.layers[this.active] || e.button !== 0 || !TOOLS.has(this.tool)) {
      return;
    }
    e.preventDefault();
    const p = imagePoint(this.canvas, e);
    if (this.tool === "fill") {
      const before = this.pixels(this.active);
      if (floodFill(this.layers[this.active], Math.floor(p.x), Math.floor(p.y))) {
        this.history.push(this.active, before);
        this.changed();
      }
      return;
    }
    this.remember(this.active);
    this.canvas.setPointerCapture(e.pointerId);
    this.drawing = p;
    this.stroke(p, p);
  }

  move(e) {
    if (!this.drawing) return;
    const p = imagePoint(this.canvas, e);
    this.stroke(this.drawing, p);
    this.drawing = p;
  }

  up() {
    if (!this.drawing) return;
    this.drawing = null;
    this.changed();
  }

  stroke(from, to) {
    const erase = this.tool === "eraser";
    const width = this.size * from.scale; // the brush is sized in screen pixels
    brushLine(this.layers[this.active], from, to, { erase, width });
    this.render();
  }

  render() {
    drawScene(this.canvas, this.image, this.layers, this.active, this.tint);
    if (this.decorate && this.image) this.decorate(this.ctx);
  }
}

/** Where pointer event `e` is on `c`, in the image's pixels; `scale`: image pixels per
 * screen pixel. */
export function imagePoint(c, e) {
  // the content box: the border is not part of the picture
  const r = c.getBoundingClientRect();
  const left = r.left + c.clientLeft;
  const top = r.top + c.clientTop;
  const w = c.clientWidth || r.width;
  const h = c.clientHeight || r.height;
  return {
    x: ((e.clientX - left) / w) * c.width,
    y: ((e.clientY - top) / h) * c.height,
    scale: c.width / w,
  };
}

/** The image with each mask tinted in its colour over it (the `active` one stronger) on
 * `canvas`, and outside the centred square shaded; `tint` is a scratch canvas. */
function drawScene(canvas, image, layers, active, tint) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (image) ctx.drawImage(image, 0, 0);
  layers.forEach((layer, i) => {
    tint.width = canvas.width; // also clears it
    tint.height = canvas.height;
    const t = tint.getContext("2d");
    t.drawImage(layer, 0, 0);
    t.globalCompositeOperation = "source-in";
    t.fillStyle = COLOURS[i % COLOURS.length];
    t.fillRect(0, 0, tint.width, tint.height);
    ctx.globalAlpha = i === active ? 0.6 : 0.35;
    ctx.drawImage(tint, 0, 0);
    ctx.globalAlpha = 1;
  });
  if (image && canvas.width !== canvas.height) {
    // the engine learns from the centred square only: shade what it leaves out
    const sq = centreSquare(canvas.width, canvas.height);
    ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
    if (canvas.width > canvas.height) {
      ctx.fillRect(0, 0, sq.x, canvas.height);
      ctx.fillRect(sq.x + sq.side, 0, canvas.width - sq.x - sq.side, canvas.height);
    } else {
      ctx.fillRect(0, 0, canvas.width, sq.y);
      ctx.fillRect(0, sq.y + sq.side, canvas.width, canvas.height - sq.y - sq.side);
    }
  }
}
