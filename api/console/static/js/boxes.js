// One box per token on a canvas standing for the output frame: draw, move, resize, nudge.

const HANDLE = 10; // px on screen: how near a corner a drag resizes
const MIN = 0.02; // smallest box side, as a fraction of the frame
const STEP = 0.01; // arrow key nudge; with Shift, ten times this

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const round = (v) => Math.round(v * 1000) / 1000;

export class BoxEditor {
  /**
   * `tokens`: [{token, name, colour}]; `onChange(token, box)` after every edit (box null:
   * removed). Boxes are [x0, y0, x1, y1] as fractions of the frame, as the API takes them.
   */
  constructor(canvas, tokens, onChange = () => {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.tokens = tokens;
    this.onChange = onChange;
    this.boxes = new Map();
    this.active = tokens.length ? tokens[0].token : null;
    this.drag = null;
    this.background = null;
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", () => this.up());
    canvas.addEventListener("pointercancel", () => this.up());
    canvas.addEventListener("keydown", (e) => this.key(e));
    canvas.addEventListener("focus", () => this.render());
    canvas.addEventListener("blur", () => this.render());
    new ResizeObserver(() => this.fit()).observe(canvas);
    this.fit();
  }

  fit() {
    // the content box (clientWidth): the border is not part of the frame
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    this.canvas.height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    this.render();
  }

  setBackground(image) {
    this.background = image;
    this.render();
  }

  select(token) {
    this.active = token;
    this.render();
  }

  /** Set a box from outside (the number fields); values are kept as typed. */
  set(token, box) {
    if (box) this.boxes.set(token, box);
    else this.boxes.delete(token);
    this.render();
  }

  commit(token) {
    const box = this.boxes.get(token) || null;
    this.onChange(token, box && box.map(round));
    this.render();
  }

  frac(e) {
    const c = this.canvas;
    const r = c.getBoundingClientRect();
    const w = c.clientWidth || r.width;
    const h = c.clientHeight || r.height;
    return { x: clamp((e.clientX - r.left - c.clientLeft) / w, 0, 1),
      y: clamp((e.clientY - r.top - c.clientTop) / h, 0, 1), px: 1 / w };
  }

  /** The token's box under the point and what a drag there does: move, or a corner. */
  hit(p) {
    const order = [this.active, ...this.tokens.map((t) => t.token).filter((t) => t !== this.active)];
    for (const token of order) {
      const b = this.boxes.get(token);
      if (!b) continue;
      const reach = HANDLE * p.px;
      const near = (v, w) => Math.abs(v - w) <= reach;
      const corner = `${near(p.y, b[1]) ? "n" : near(p.y, b[3]) ? "s" : ""}${
        near(p.x, b[0]) ? "w" : near(p.x, b[2]) ? "e" : ""}`;
      const inside = p.x >= b[0] - reach && p.x <= b[2] + reach
        && p.y >= b[1] - reach && p.y <= b[3] + reach;
      if (inside && corner.length === 2) return { token, mode: corner };
      if (p.x > b[0] && p.x < b[2] && p.y > b[1] && p.y < b[3]) return { token, mode: "move" };
    }
    return null;
  }

  down(e) {
    if (e.button !== 0 || !this.active) return;
    e.preventDefault();
    this.canvas.focus();
    const p = this.frac(e);
    const hit = this.hit(p);
    this.canvas.setPointerCapture(e.pointerId);
    if (hit) {
      this.active = hit.token;
      this.onSelect?.(hit.token);
      this.drag = { ...hit, start: p, box: [...this.boxes.get(hit.token)] };
    } else {
      this.drag = { token: this.active, mode: "draw", start: p };
    }
    this.render();
  }

  move(e) {
    const p = this.frac(e);
    if (!this.drag) {
      const hit = this.hit(p);
      const cursors = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize" };
      this.canvas.style.cursor = hit ? cursors[hit.mode] || "move" : "crosshair";
      return;
    }
    const d = this.drag;
    let box;
    if (d.mode === "draw") {
      box = [Math.min(d.start.x, p.x), Math.min(d.start.y, p.y),
        Math.max(d.start.x, p.x), Math.max(d.start.y, p.y)];
    } else if (d.mode === "move") {
      const w = d.box[2] - d.box[0];
      const h = d.box[3] - d.box[1];
      const x0 = clamp(d.box[0] + p.x - d.start.x, 0, 1 - w);
      const y0 = clamp(d.box[1] + p.y - d.start.y, 0, 1 - h);
      box = [x0, y0, x0 + w, y0 + h];
    } else {
      box = [...d.box];
      if (d.mode.includes("w")) box[0] = Math.min(p.x, box[2] - MIN);
      if (d.mode.includes("e")) box[2] = Math.max(p.x, box[0] + MIN);
      if (d.mode.includes("n")) box[1] = Math.min(p.y, box[3] - MIN);
      if (d.mode.includes("s")) box[3] = Math.max(p.y, box[1] + MIN);
    }
    this.boxes.set(d.token, box.map((v) => clamp(v, 0, 1)));
    this.commit(d.token);
  }

  up() {
    if (!this.drag) return;
    const { token, mode } = this.drag;
    const b = this.boxes.get(token);
    if (mode === "draw" && b && (b[2] - b[0] < MIN || b[3] - b[1] < MIN)) {
      this.boxes.delete(token); // a click, not a drag: no box
      this.commit(token);
    }
    this.drag = null;
  }

  key(e) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const b = this.boxes.get(this.active);
    if (e.key === "Delete" || e.key === "Backspace") {
      if (b) this.set(this.active, null);
      this.commit(this.active);
      e.preventDefault();
      return;
    }
    if (e.key === "Enter" && !b && this.active) {
      e.preventDefault();
      this.boxes.set(this.active, [0.25, 0.25, 0.75, 0.75]); // a box to start from, by keys
      this.commit(this.active);
      return;
    }
    if (!moves[e.key] || !b) return;
    e.preventDefault();
    const step = e.shiftKey ? STEP * 10 : STEP;
    const [dx, dy] = moves[e.key].map((v) => v * step);
    if (e.altKey) { // resize: the right and bottom edges follow the keys
      this.boxes.set(this.active, [b[0], b[1], clamp(b[2] + dx, b[0] + MIN, 1), clamp(b[3] + dy, b[1] + MIN, 1)]);
      this.commit(this.active);
      return;
    }
    const w = b[2] - b[0];
    const h = b[3] - b[1];
    const x0 = clamp(b[0] + dx, 0, 1 - w);
    const y0 = clamp(b[1] + dy, 0, 1 - h);
    this.boxes.set(this.active, [x0, y0, x0 + w, y0 + h]);
    this.commit(this.active);
  }

  render() {
    const { ctx, canvas } = this;
    const W = canvas.width;
    const H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#f4f4f4";
    ctx.fillRect(0, 0, W, H);
    if (this.background) {
      ctx.globalAlpha = 0.35;
      ctx.drawImage(this.background, 0, 0, W, H);
      ctx.globalAlpha = 1;
    }
    ctx.strokeStyle = "#ddd";
    ctx.lineWidth = 1;
    for (let i = 1; i < 8; i += 1) {
      ctx.beginPath();
      ctx.moveTo((i * W) / 8, 0);
      ctx.lineTo((i * W) / 8, H);
      ctx.moveTo(0, (i * H) / 8);
      ctx.lineTo(W, (i * H) / 8);
      ctx.stroke();
    }
    const ratio = window.devicePixelRatio || 1;
    ctx.font = `${13 * ratio}px system-ui, sans-serif`;
    const lh = 18 * ratio;
    // the selected box last, so that its outline, corners and name lie on top
    const items = this.tokens.filter((t) => this.boxes.has(t.token))
      .sort((a, b) => (a.token === this.active) - (b.token === this.active))
      .map((t) => {
        const b = this.boxes.get(t.token);
        const label = `${t.token} ${t.name}`;
        return { t, label, x: b[0] * W, y: b[1] * H, w: (b[2] - b[0]) * W, h: (b[3] - b[1]) * H,
          lw: ctx.measureText(label).width + 8 * ratio, lh };
      });
    for (const { t, x, y, w, h } of items) {
      const active = t.token === this.active;
      ctx.fillStyle = `${t.colour}33`;
      ctx.fillRect(x, y, w, h);
      ctx.strokeStyle = t.colour;
      ctx.lineWidth = (active ? 3 : 2) * ratio;
      ctx.setLineDash(active && document.activeElement === canvas ? [6 * ratio, 3 * ratio] : []);
      ctx.strokeRect(x, y, w, h);
      ctx.setLineDash([]);
    }
    // the selected box's name takes its place first; the others make room for it
    const spots = placeLabels([...items].reverse(), W, H).reverse();
    items.forEach(({ t, label, x, y, w, h }, k) => {
      const spot = spots[k];
      ctx.fillStyle = t.colour;
      ctx.fillRect(spot.x, spot.y, spot.w, spot.h);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, spot.x + 4 * ratio, spot.y + 13 * ratio);
      if (t.token !== this.active) return;
      ctx.fillStyle = t.colour;
      for (const [cx, cy] of [[x, y], [x + w, y], [x, y + h], [x + w, y + h]]) {
        ctx.fillRect(cx - 4 * ratio, cy - 4 * ratio, 8 * ratio, 8 * ratio);
      }
    });
  }
}

const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

/**
 * Where each box's name label goes, in order, so that no label covers one placed before it:
 * above the box's top edge, else just inside it, else lower down the box (then up, above
 * it); inside the W x H frame. `items`: [{x, y, w, h, lw, lh}] (box, label size); returns
 * [{x, y, w, h}] of the labels.
 */
export function placeLabels(items, W, H) {
  const placed = [];
  for (const it of items) {
    const x = clamp(it.x, 0, Math.max(0, W - it.lw));
    const ys = [it.y - it.lh];
    for (let y = it.y; y + it.lh <= Math.max(it.y + it.h, it.y + it.lh); y += it.lh) ys.push(y);
    for (let y = it.y - 2 * it.lh; y >= 0; y -= it.lh) ys.push(y);
    const spots = ys.map((y) => ({ x, y: clamp(y, 0, Math.max(0, H - it.lh)), w: it.lw, h: it.lh }));
    placed.push(spots.find((s) => !placed.some((p) => overlaps(s, p))) || spots[0]);
  }
  return placed;
}
