// The concepts: status, thumbnail, names; open, delete.

import { api } from "./api.js";
import { el, problemText, view, when } from "./dom.js";

const PAGE = 20;

export function showConcepts(main) {
  main.append(view("view-concepts"));
  const list = main.querySelector("#concept-list");
  const more = main.querySelector("#more-concepts");
  const problem = main.querySelector(".form-problem");
  let offset = 0;
  const load = async () => {
    try {
      const page = await api(`v1/concepts?limit=${PAGE}&offset=${offset}`);
      list.append(...page.data.map((c) => card(c, problem)));
      offset += page.data.length;
      more.hidden = !page.next;
      if (!list.children.length) {
        list.append(el("li", { class: "hint" }, "No concepts yet: make one under New concept."));
      }
    } catch (err) {
      problem.textContent = problemText(err);
    }
  };
  more.addEventListener("click", load);
  load();
}

function card(concept, problem) {
  const names = concept.tokens.map((t) => t.name).join(", ") || "(no names)";
  const open = `#/concepts/${concept.id}`;
  const item = el(
    "li",
    { class: "card", "data-concept": concept.id },
    concept.inputs.image
      ? el("img", {
          src: concept.inputs.image,
          alt: `Input image of ${names}`,
          class: "thumb",
          loading: "lazy",
        })
      : el("div", { class: "thumb" }),
    el(
      "div",
      {},
      el("h3", {}, el("a", { href: open }, names)),
      el(
        "p",
        {},
        el("span", { class: "badge", "data-status": concept.status }, concept.status),
        ` ${concept.tokens.length} instance${concept.tokens.length === 1 ? "" : "s"} · ${when(concept.created_at)}`,
      ),
      concept.error
        ? el("p", { class: "problem" }, `${concept.error.type}: ${concept.error.message}`)
        : null,
      el(
        "div",
        { class: "row" },
        el("a", { href: open, class: "button" }, "Open"),
        el(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: async () => {
              if (!window.confirm(`Delete the concept ${names}, its jobs' files and its images?`)) {
                return;
              }
              try {
                await api(`v1/concepts/${concept.id}`, { method: "DELETE" });
                item.remove();
              } catch (err) {
                problem.textContent = problemText(err);
              }
            },
          },
          `Delete ${names}`,
        ),
      ),
    ),
  );
  return item;
}
