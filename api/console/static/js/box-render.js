// Drawing the box editor's frame: the input's square faintly behind a grid, each token's box
// in its colour, the selected one on top with its corners, and each box's name label.

import { placeLabels } from "./box-geometry.js";

/**
 * Draw on `canvas` (`focused`: it has the keyboard focus) the `background` image (or none),
 * then the `boxes` (a Map token -> box) of `tokens` ([{token, name, colour}]), `active`
 * being the selected token.
 */
export function drawEditor(canvas, { background, tokens, boxes, active, focused }) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  drawGrid(ctx, W, H, background);
  const ratio = window.devicePixelRatio || 1;
  ctx.font = `${13 * ratio}px system-ui, sans-serif`;
  const lh = 18 * ratio;
  // the selected box last, so that its outline, corners and name lie on top
  const items = tokens
    .filter((t) => boxes.has(t.token))
    .sort((a, b) => (a.token === active) - (b.token === active))
    .map((t) => {
      const b = boxes.get(t.token);
      const label = `${t.token} ${t.name}`;
      return {
        t,
        label,
        x: b[0] * W,
        y: b[1] * H,
        w: (b[2] - b[0]) * W,
        h: (b[3] - b[1]) * H,
        lw: ctx.measureText(label).width + 8 * ratio,
        lh,
      };
    });
  for (const { t, x, y, w, h } of items) {
    const selected = t.token === active;
    ctx.fillStyle = `${t.colour}33`;
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = t.colour;
    ctx.lineWidth = (selected ? 3 : 2) * ratio;
    ctx.setLineDash(selected && focused ? [6 * ratio, 3 * ratio] : []);
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
  }
  drawLabels(ctx, items, active, ratio);
}

function drawGrid(ctx, W, H, background) {
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#f4f4f4";
  ctx.fillRect(0, 0, W, H);
  if (background) {
    ctx.globalAlpha = 0.35;
    ctx.drawImage(background, 0, 0, W, H);
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
}

/** Each box's name label, and the selected box's corner handles. */
function drawLabels(ctx, items, active, ratio) {
  const { width: W, height: H } = ctx.canvas;
  // the selected box's name takes its place first; the others make room for it
  const spots = placeLabels([...items].reverse(), W, H).reverse();
  items.forEach(({ t, label, x, y, w, h }, k) => {
    const spot = spots[k];
    ctx.fillStyle = t.colour;
    ctx.fillRect(spot.x, spot.y, spot.w, spot.h);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, spot.x + 4 * ratio, spot.y + 13 * ratio);
    if (t.token !== active) return;
    ctx.fillStyle = t.colour;
    for (const [cx, cy] of [
      [x, y],
      [x + w, y],
      [x, y + h],
      [x + w, y + h],
    ]) {
      ctx.fillRect(cx - 4 * ratio, cy - 4 * ratio, 8 * ratio, 8 * ratio);
    }
  });
}
