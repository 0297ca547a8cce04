// Painting one mask per instance over the scene: brush, eraser, fill, brush size, undo.

const UNDO_DEPTH = 30;

/** Instance colours, shared by the masks, the boxes and the chips. */
export const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
  "#f032e6", "#9a6324"];

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

  /** Replace mask `index` by an uploaded mask image (white or opaque = the instance). */
  loadMask(index, bitmap) {
    this.remember(index);
    const { width, height } = this.canvas;
    const tmp = document.createElement("canvas");
    tmp.width = width;
    tmp.height = height;
    const t = tmp.getContext("2d");
    t.drawImage(bitmap, 0, 0, width, height);
    const img = t.getImageData(0, 0, width, height);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const lum = (0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]) * (d[i + 3] / 255);
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = lum >= 127.5 ? 255 : 0;
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
    const r = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) / r.width) * this.canvas.width,
      y: ((e.clientY - r.top) / r.height) * this.canvas.height,
      scale: this.canvas.width / r.width,
    };
  }

  down(e) {
    if (!this.image || !this.layers[this.active] || e.button !== 0) return;
    e.preventDefault();
    const p = this.point(e);
    this.remember(this.active);
    if (this.tool === "fill") {
      fill(this.layers[this.active], Math.floor(p.x), Math.floor(p.y));
      this.changed();
      return;
    }
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
  }
}

// Flood fill of the region around (x, y) that is as painted as (x, y) is, on one mask: a
// few lines on ImageData, where a library would be a download the console must not need.
function fill(layer, x, y) {
  const { width, height } = layer;
  if (x < 0 || y < 0 || x >= width || y >= height) return;
  const ctx = layer.getContext("2d");
  const img = ctx.getImageData(0, 0, width, height);
  const a = img.data;
  const painted = (i) => a[i * 4 + 3] >= 128;
  const target = painted(y * width + x);
  const seen = new Uint8Array(width * height);
  const stack = [y * width + x];
  while (stack.length) {
    const i = stack.pop();
    if (seen[i] || painted(i) !== target) continue;
    seen[i] = 1;
    a[i * 4] = a[i * 4 + 1] = a[i * 4 + 2] = 255;
    a[i * 4 + 3] = target ? 0 : 255;
    const px = i % width;
    if (px > 0) stack.push(i - 1);
    if (px < width - 1) stack.push(i + 1);
    if (i >= width) stack.push(i - width);
    if (i < width * (height - 1)) stack.push(i + width);
  }
  ctx.putImageData(img, 0, 0);
}
