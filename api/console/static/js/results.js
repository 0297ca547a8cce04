// A concept's syntheses, newest first, followed live: each image with its layout preview
// toggle, each subject's in-box share and a download link.

import { api } from "./api.js";
import { el, percent, when } from "./dom.js";
import { trackJob } from "./progress.js";

/** Show the concept's syntheses; returns how many there are. */
export async function listResults(section, concept, stops) {
  const page = await api(`v1/concepts/${concept.id}/syntheses?limit=20`);
  if (stops.left) return page.data.length;
  for (const job of page.data.reverse()) addResult(section, job, stops, true);
  return page.data.length;
}

export function addResult(section, job, stops, first) {
  const list = section.querySelector(".syntheses");
  const progress = el("div", { class: "job-progress" });
  const gallery = el("ul", { class: "gallery" });
  const item = el(
    "li",
    { class: "synthesis", "data-job": job.id },
    el("h4", {}, `“${job.request?.prompt ?? ""}”`),
    el("p", { class: "hint" }, `Job ${job.id} · ${when(job.created_at)}`),
    progress,
    gallery,
  );
  if (first) list.prepend(item);
  else list.append(item);
  section.hidden = false;
  stops.push(
    trackJob(progress, job, (done) => {
      if (done.status === "succeeded") {
        // the stream's last body may predate the result's links: read the job once more
        api(`v1/jobs/${done.id}`).then((full) => showImages(gallery, full));
      }
    }),
  );
}

function showImages(gallery, job) {
  const result = job.result || {};
  if (result.expired_at) {
    gallery.replaceChildren(
      el("li", { class: "hint" }, `The images were deleted at ${when(result.expired_at)}.`),
    );
    return;
  }
  gallery.replaceChildren(...(result.images || []).map((image) => resultItem(job, image)));
}

/** One image of synthesis `job`: the image (with its preview over it), its seed, the
 * preview toggle, the in-box shares and the download link. */
function resultItem(job, image) {
  const preview = image.preview_url
    ? el("img", {
        src: image.preview_url,
        class: "preview",
        alt: `Layout preview of image ${image.index + 1}`,
        hidden: true,
      })
    : null;
  const shares = image.in_box_share ?? image.diagnostics ?? {};
  const prompt = job.request?.prompt ?? "";
  const alt = `Image ${image.index + 1} of “${prompt}”, seed ${image.seed}`;
  const download = { download: `mifo-${job.id.slice(0, 8)}-${image.index}.png`, class: "download" };
  return el(
    "li",
    { class: "result" },
    el(
      "figure",
      {},
      el("div", { class: "stack" }, el("img", { src: image.url, alt }), preview),
      el(
        "figcaption",
        {},
        el("span", {}, `Seed ${image.seed}`),
        preview && layoutToggle(preview),
        el(
          "ul",
          { class: "shares", "aria-label": "In-box share of each subject" },
          ...Object.entries(shares).map(([token, v]) =>
            el(
              "li",
              {},
              `${token}: ${percent(typeof v === "number" ? v : v.in_box_share)} in its box`,
            ),
          ),
        ),
        image.url
          ? el("a", { href: image.url, ...download }, `Download image ${image.index + 1} (PNG)`)
          : null,
      ),
    ),
  );
}

/** The "Show layout" button that shows or hides `preview`. */
function layoutToggle(preview) {
  const toggle = el(
    "button",
    {
      type: "button",
      "aria-pressed": "false",
      onclick: () => {
        const on = toggle.getAttribute("aria-pressed") !== "true";
        toggle.setAttribute("aria-pressed", String(on));
        preview.hidden = !on;
      },
    },
    "Show layout",
  );
  return toggle;
}
