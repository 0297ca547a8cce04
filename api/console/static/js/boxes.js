// One box per token on a canvas standing for the output frame: draw, move, resize, nudge.
// The geometry is in box-geometry.js, the drawing in box-render.js.

import {
  clamp,
  cursorFor,
  draggedBox,
  hitBox,
  nudgedBox,
  round,
  tooSmall,
} from "./box-geometry.js";
import { drawEditor } from "./box-render.js";

export class BoxEditor {
  /**
   * `tokens`: [{token, name, colour}]; `onChange(token, box)` after every edit (box null:
   * removed). Boxes are [x0, y0, x1, y1] as fractions of the frame, as the API takes them.
   */
  constructor(canvas, tokens, onChange = () => {}) {
    this.canvas = canvas;
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

  /** The box under point `p` and what a drag there does; the selected box comes first. */
  hit(p) {
    const others = this.tokens.map((t) => t.token).filter((t) => t !== this.active);
    return hitBox(this.boxes, [this.active, ...others], p);
  }

  // Dragging: on a box's inside moves it, on a corner resizes it, elsewhere draws a new one.

  down(e) {
    if (e.button !== 0 || !this.active) return;
    e.preventDefault();
    this.canvas.focus();
    const p = framePoint(this.canvas, e);
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
    const p = framePoint(this.canvas, e);
    if (!this.drag) {
      this.canvas.style.cursor = cursorFor(this.hit(p));
      return;
    }
    this.boxes.set(this.drag.token, draggedBox(this.drag, p));
    this.commit(this.drag.token);
  }

  up() {
    if (!this.drag) return;
    const { token, mode } = this.drag;
    const b = this.boxes.get(token);
    if (mode === "draw" && b && tooSmall(b)) {
      this.boxes.delete(token); // a click, not a drag: no box
      this.commit(token);
    }
    this.drag = null;
  }

  // The keys: Delete removes the selected box, Enter adds one, the arrows nudge it.

  key(e) {
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
    const nudged = b && nudgedBox(b, e);
    if (!nudged) return;
    e.preventDefault();
    this.boxes.set(this.active, nudged);
    this.commit(this.active);
  }

  render() {
    const { canvas, background, tokens, boxes, active } = this;
    const focused = document.activeElement === canvas;
    drawEditor(canvas, { background, tokens, boxes, active, focused });
  }
}

/** Where pointer event `e` is on `c`, as fractions of the frame (inside it); `px`: one
 * screen pixel as a fraction of the frame's width. */
function framePoint(c, e) {
  const r = c.getBoundingClientRect();
  const w = c.clientWidth || r.width;
  const h = c.clientHeight || r.height;
  return {
    x: clamp((e.clientX - r.left - c.clientLeft) / w, 0, 1),
    y: clamp((e.clientY - r.top - c.clientTop) / h, 0, 1),
    px: 1 / w,
  };
}
