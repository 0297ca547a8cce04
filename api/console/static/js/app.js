// The console's entry: routes (#/new, #/concepts, #/concepts/<id>, #/jobs) and the key prompt.

import { apiKey, onKeyNeeded } from "./api.js";
import { problemText } from "./dom.js";
import { showConcept } from "./concept.js";
import { showConcepts } from "./concepts.js";
import { showJobs } from "./jobs.js";
import { showNew } from "./new.js";

const main = document.getElementById("main");
let leave = () => {};
let routed = false;

function route() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#\/?/, "");
  const [section, id] = hash.split("/");
  main.replaceChildren();
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === (section || "new")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const views = { new: showNew, concepts: id ? showConcept : showConcepts, jobs: showJobs };
  const show = views[section] || showNew;
  // a view returns what stops its streams and timers when the user goes elsewhere
  leave = show(main, id ? decodeURIComponent(id) : undefined) || (() => {});
  document.title = `${main.querySelector("h2")?.textContent || "MIFO"} - MIFO console`;
  if (routed) main.querySelector("h2")?.focus(); // not on the first load: the page starts at the top
  routed = true;
}

// One prompt at a time; every request waiting on a key resumes once it is given.
const dialog = document.getElementById("key-dialog");
const input = document.getElementById("key-input");
const problemLine = document.getElementById("key-problem");
let waiting = null;

function askForKey(problem) {
  problemLine.textContent = problemText(problem);
  if (!waiting) {
    waiting = new Promise((resolve) => {
      dialog.onclose = () => {
        waiting = null;
        const given = dialog.returnValue === "key";
        // the prompt follows a 401: a key still kept was refused, so it goes with Cancel
        if (!given) apiKey.clear();
        resolve(given);
      };
    });
    input.value = "";
    dialog.returnValue = ""; // Escape keeps the last one
    dialog.showModal();
    input.focus();
  }
  return waiting;
}

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!input.value.trim()) return;
  apiKey.set(input.value);
  dialog.close("key");
});
document.getElementById("key-cancel").addEventListener("click", () => dialog.close("cancel"));
document.getElementById("key-forget").addEventListener("click", () => {
  apiKey.clear();
  input.value = "";
  input.focus();
});
document.getElementById("key-button").addEventListener("click", () => {
  problemLine.textContent = apiKey.get() ? "A key is in use in this tab." : "No key in use.";
  input.value = "";
  dialog.returnValue = "";
  dialog.showModal();
  dialog.onclose = () => {
    if (dialog.returnValue === "key") route();
  };
});

onKeyNeeded(askForKey);
window.addEventListener("hashchange", route);
route();
