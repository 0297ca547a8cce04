// Painting one mask per instance over the scene: brush, eraser, fill, brush size, undo.

const UNDO_DEPTH = 30;

/** Instance colours, shared by the masks, the boxes and the chips: the palette of the
 * engine's layout preview (mifo_engine/render.py, PALETTE), taken in token order by both. */
export const COLOURS = ["#e63c3c", "#2878e6", "#28aa46", "#f0a014",
  "#a03cc8", "#14aaaa", "#c85a8c", "#787878"];

// The engine's reading of a mask file (mifo_engine/inputs.py, mask_to_binary), at 50%.
const BW_DARK = 0.15 * 255;
const BW_LIGHT = 0.85 * 255;
const BW_SHARE = 0.97;

/** The centred square (x, y, side) the engine keeps of a width x height image. */
export function centreSquare(width, height) {
  const side = Math.min(width, height);
  return { x: Math.floor((width - side) / 2), y: Math.floor((height - side) / 2), side };
}

/** Why `bitmap` cannot be a mask of a width x height image, or null when it can. */
export function maskSizeProblem(bitmap, width, height) {
  if (bitmap.width === width && bitmap.height === height) return null;
  return `The mask is ${bitmap.width} x ${bitmap.height} pixels, the image ${width} x ${height}.`;
}

/** Foreground (1) or not (0) per pixel of RGBA data, by the engine's rule: an opaque mask
 * by its luminance; with transparency, by its alpha unless the colour is itself a
 * black-and-white mask, where a pixel must be light and opaque. */
export function maskBits(d) {
  const n = d.length / 4;
  const lum = new Float32Array(n);
  let transparent = false;
  let dark = 0;
  let light = 0;
  for (let i = 0; i < n; i += 1) {
    lum[i] = 0.299 * d[i * 4] + 0.587 * d[i * 4 + 1] + 0.114 * d[i * 4 + 2];
    if (d[i * 4 + 3] <= 127.5) transparent = true;
    if (lum[i] < BW_DARK) dark += 1;
    else if (lum[i] > BW_LIGHT) light += 1;
  }
  const twoTone = dark > 0 && light > 0 && (dark + light) / n >= BW_SHARE;
  const bits = new Uint8Array(n);
  for (let i = 0; i < n; i += 1) {
    const opaque = d[i * 4 + 3] > 127.5;
    const bright = lum[i] > 127.5;
    bits[i] = transparent ? (twoTone ? bright && opaque : opaque) : bright;
  }
  return bits;
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
    this.undo = [];
    this.drawing = null;
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  setImage(bitmap) {
    this.image = bitmap;
    this.canvas.width = bitmap.width;
    this.canvas.height = bitmap.height;
    for (const layer of this.layers) this.resize(layer);
    this.undo = [];
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
    this.undo = this.undo.filter((u) => u.layer !== index)
      .map((u) => ({ ...u, layer: u.layer > index ? u.layer - 1 : u.layer }));
    this.active = Math.min(this.active, this.layers.length - 1);
    this.render();
  }

  /** Share of the image's pixels in mask `index` (0 when nothing is painted). */
  coverage(index) {
    const { width, height } = this.canvas;
    if (!width || !height) return 0;
    const data = this.layers[index].getContext("2d").getImageData(0, 0, width, height).data;
    let on = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) on += 1;
    return on / (width * height);
  }

  /** Mask `index` as a PNG: white on black, the image's size. */
  toBlob(index) {
    const out = document.createElement("canvas");
    out.width = this.canvas.width;
    out.height = this.canvas.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    const white = document.createElement("canvas");
    white.width = out.width;
    white.height = out.height;
    const w = white.getContext("2d");
    w.drawImage(this.layers[index], 0, 0);
    w.globalCompositeOperation = "source-in";
    w.fillStyle = "#fff";
    w.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(white, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  /** Replace mask `index` by an uploaded mask image of the image's size, read as the
   * engine reads it (see maskBits); the caller checks the size (maskSizeProblem). */
  loadMask(index, bitmap) {
    const { width, height } = this.canvas;
    const problem = maskSizeProblem(bitmap, width, height);
    if (problem) throw new Error(problem);
    this.remember(index);
    const tmp = document.createElement("canvas");
    tmp.width = width;
    tmp.height = height;
    const t = tmp.getContext("2d");
    t.drawImage(bitmap, 0, 0);
    const img = t.getImageData(0, 0, width, height);
    const d = img.data;
    const bits = maskBits(d);
    for (let i = 0; i < bits.length; i += 1) {
      d[i * 4] = d[i * 4 + 1] = d[i * 4 + 2] = 255;
      d[i * 4 + 3] = bits[i] ? 255 : 0;
    }
    this.layers[index].getContext("2d").putImageData(img, 0, 0);
    this.changed();
  }

  remember(index) {
    const { width, height } = this.canvas;
    const pixels = this.layers[index].getContext("2d").getImageData(0, 0, width, height);
    this.undo.push({ layer: index, pixels });
    if (this.undo.length > UNDO_DEPTH) this.undo.shift();
  }

  undoLast() {
    const last = this.undo.pop();
    if (!last) return false;
    this.layers[last.layer].getContext("2d").putImageData(last.pixels, 0, 0);
    this.changed();
    return true;
  }

  changed() {
    this.render();
    this.onChange();
  }

  point(e) {
    // the content box: the border is not part of the picture
    const c = this.canvas;
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

  down(e) {
    if (!this.image || !this.layers[this.active] || e.button !== 0) return;
    e.preventDefault();
    const p = this.point(e);
    if (this.tool === "fill") {
      const before = this.layers[this.active].getContext("2d").getImageData(0, 0, this.canvas.width, this.canvas.height);
      if (fill(this.layers[this.active], Math.floor(p.x), Math.floor(p.y))) {
        this.undo.push({ layer: this.active, pixels: before });
        if (this.undo.length > UNDO_DEPTH) this.undo.shift();
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
    const p = this.point(e);
    this.stroke(this.drawing, p);
    this.drawing = p;
  }

  up() {
    if (!this.drawing) return;
    this.drawing = null;
    this.changed();
  }

  stroke(from, to) {
    const ctx = this.layers[this.active].getContext("2d");
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = "#fff";
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = this.size * from.scale; // the brush is sized in screen pixels
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    ctx.restore();
    this.render();
  }

  render() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (this.image) ctx.drawImage(this.image, 0, 0);
    this.tint = this.tint || document.createElement("canvas"); // reused: render runs per move
    const tint = this.tint;
    this.layers.forEach((layer, i) => {
      tint.width = canvas.width; // also clears it
      tint.height = canvas.height;
      const t = tint.getContext("2d");
      t.drawImage(layer, 0, 0);
      t.globalCompositeOperation = "source-in";
      t.fillStyle = COLOURS[i % COLOURS.length];
      t.fillRect(0, 0, tint.width, tint.height);
      ctx.globalAlpha = i === this.active ? 0.6 : 0.35;
      ctx.drawImage(tint, 0, 0);
      ctx.globalAlpha = 1;
    });
    if (this.image && canvas.width !== canvas.height) {
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
}

// Flood fill of the unpainted region around (x, y) on one mask; a click on a painted pixel
// changes nothing (the eraser takes paint away). A few lines on ImageData, where a library
// would be a download the console must not need. True when something was filled.
function fill(layer, x, y) {
  const { width, height } = layer;
  if (x < 0 || y < 0 || x >= width || y >= height) return false;
  const ctx = layer.getContext("2d");
  const img = ctx.getImageData(0, 0, width, height);
  const a = img.data;
  const painted = (i) => a[i * 4 + 3] >= 128;
  if (painted(y * width + x)) return false;
  const seen = new Uint8Array(width * height);
  const stack = [y * width + x];
  while (stack.length) {
    const i = stack.pop();
    if (seen[i] || painted(i)) continue;
    seen[i] = 1;
    a[i * 4] = a[i * 4 + 1] = a[i * 4 + 2] = 255;
    a[i * 4 + 3] = 255;
    const px = i % width;
    if (px > 0) stack.push(i - 1);
    if (px < width - 1) stack.push(i + 1);
    if (i >= width) stack.push(i - width);
    if (i < width * (height - 1)) stack.push(i + width);
  }
  ctx.putImageData(img, 0, 0);
  return true;
}
