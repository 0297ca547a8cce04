// The painter's undo: the pixels of a mask as they were before each change, newest last.

export class PaintHistory {
  constructor(depth) {
    this.depth = depth; // the oldest change is forgotten past this many
    this.entries = [];
  }

  /** Keep `pixels` (ImageData) as mask `layer` was before a change. */
  push(layer, pixels) {
    this.entries.push({ layer, pixels });
    if (this.entries.length > this.depth) this.entries.shift();
  }

  /** The newest entry ({layer, pixels}), taken off; undefined when there is none. */
  pop() {
    return this.entries.pop();
  }

  clear() {
    this.entries = [];
  }

  /** Mask `index` is gone: forget its changes and renumber the masks after it. */
  removeLayer(index) {
    this.entries = this.entries
      .filter((u) => u.layer !== index)
      .map((u) => ({ ...u, layer: u.layer > index ? u.layer - 1 : u.layer }));
  }
}
