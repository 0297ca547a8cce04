// The box editor's geometry: boxes are [x0, y0, x1, y1] as fractions of the frame, as the
// API takes them. Pure functions, no drawing.

export const HANDLE = 10; // px on screen: how near a corner a drag resizes
export const MIN = 0.02; // smallest box side, as a fraction of the frame
const STEP = 0.01; // arrow key nudge; with Shift, ten times this
const MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
export const round = (v) => Math.round(v * 1000) / 1000;

/** `box` with its top left corner at (x0, y0), as near as it fits whole in the frame. */
function placedAt(box, x0, y0) {
  const w = box[2] - box[0];
  const h = box[3] - box[1];
  const x = clamp(x0, 0, 1 - w);
  const y = clamp(y0, 0, 1 - h);
  return [x, y, x + w, y + h];
}

/** Smaller than MIN on a side: a click rather than a drawn box. */
export const tooSmall = (b) => b[2] - b[0] < MIN || b[3] - b[1] < MIN;

/**
 * The first of `order`'s tokens whose box (in `boxes`, a Map) is under point `p` ({x, y,
 * px: the frame's fraction per screen pixel}), and what a drag there does: a corner
 * (`nw`, `se`, ...) resizes, the inside moves. Null when no box is there.
 */
export function hitBox(boxes, order, p) {
  for (const token of order) {
    const b = boxes.get(token);
    if (!b) continue;
    const reach = HANDLE * p.px;
    const near = (v, w) => Math.abs(v - w) <= reach;
    const corner = `${near(p.y, b[1]) ? "n" : near(p.y, b[3]) ? "s" : ""}${
      near(p.x, b[0]) ? "w" : near(p.x, b[2]) ? "e" : ""
    }`;
    const inside =
      p.x >= b[0] - reach && p.x <= b[2] + reach && p.y >= b[1] - reach && p.y <= b[3] + reach;
    if (inside && corner.length === 2) return { token, mode: corner };
    if (p.x > b[0] && p.x < b[2] && p.y > b[1] && p.y < b[3]) return { token, mode: "move" };
  }
  return null;
}

/** The pointer's cursor over a hit (hitBox) or over no box. */
export function cursorFor(hit) {
  const corners = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize" };
  return hit ? corners[hit.mode] || "move" : "crosshair";
}

/**
 * The box a drag makes with the pointer at `p`: `drag.mode` is `draw` (from `drag.start`),
 * `move` or a corner (of `drag.box`, the box as the drag began).
 */
export function draggedBox(drag, p) {
  const { mode, start, box: b } = drag;
  let box;
  if (mode === "draw") {
    box = [
      Math.min(start.x, p.x),
      Math.min(start.y, p.y),
      Math.max(start.x, p.x),
      Math.max(start.y, p.y),
    ];
  } else if (mode === "move") {
    box = placedAt(b, b[0] + p.x - start.x, b[1] + p.y - start.y);
  } else {
    box = [...b];
    if (mode.includes("w")) box[0] = Math.min(p.x, box[2] - MIN);
    if (mode.includes("e")) box[2] = Math.max(p.x, box[0] + MIN);
    if (mode.includes("n")) box[1] = Math.min(p.y, box[3] - MIN);
    if (mode.includes("s")) box[3] = Math.max(p.y, box[1] + MIN);
  }
  return box.map((v) => clamp(v, 0, 1));
}

/**
 * `b` after arrow key event `e`: moved by STEP (with Shift ten times that), or with Alt its
 * right and bottom edges moved; null when `e` is no arrow key.
 */
export function nudgedBox(b, e) {
  if (!MOVES[e.key]) return null;
  const step = e.shiftKey ? STEP * 10 : STEP;
  const [dx, dy] = MOVES[e.key].map((v) => v * step);
  if (e.altKey) {
    return [b[0], b[1], clamp(b[2] + dx, b[0] + MIN, 1), clamp(b[3] + dy, b[1] + MIN, 1)];
  }
  return placedAt(b, b[0] + dx, b[1] + dy);
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
    const spots = ys.map((y) => ({
      x,
      y: clamp(y, 0, Math.max(0, H - it.lh)),
      w: it.lw,
      h: it.lh,
    }));
    placed.push(spots.find((s) => !placed.some((p) => overlaps(s, p))) || spots[0]);
  }
  return placed;
}
