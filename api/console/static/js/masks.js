// A mask's pixels: read from a file as the engine reads it, filled, measured, exported. Each
// mask is a canvas at the image's own size whose alpha is the mask (white where painted).

// The engine's reading of a mask file (mifo_engine/inputs.py, mask_to_binary), at 50%.
const BW_DARK = 0.15 * 255;
const BW_LIGHT = 0.85 * 255;
const BW_SHARE = 0.97;

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

/** A mask file's pixels as a mask layer's (white, alpha 255 on the instance, else 0). */
export function readMask(bitmap, width, height) {
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
  return img;
}

/** Share of the width x height pixels painted on `layer` (0 when nothing is painted). */
export function coverage(layer, width, height) {
  if (!width || !height) return 0;
  const data = layer.getContext("2d").getImageData(0, 0, width, height).data;
  let on = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) on += 1;
  return on / (width * height);
}

/** `layer` as a PNG of width x height: white on black. */
export function maskPng(layer, width, height) {
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  const white = document.createElement("canvas");
  white.width = out.width;
  white.height = out.height;
  const w = white.getContext("2d");
  w.drawImage(layer, 0, 0);
  w.globalCompositeOperation = "source-in";
  w.fillStyle = "#fff";
  w.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(white, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

/** A brush or eraser stroke of `width` image pixels on `layer`, from one point to another. */
export function brushLine(layer, from, to, { erase, width }) {
  const ctx = layer.getContext("2d");
  ctx.save();
  ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
  ctx.strokeStyle = "#fff";
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = width;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + 0.01, to.y);
  ctx.stroke();
  ctx.restore();
}

// Flood fill of the unpainted region around (x, y) on one mask; a click on a painted pixel
// changes nothing (the eraser takes paint away). A few lines on ImageData, where a library
// would be a download the console must not need. True when something was filled.
export function floodFill(layer, x, y) {
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
