// The console's frame: the page for the address's #fragment, the key prompt on a 401.

import { ApiError, setApiKey } from "./api.js";
import { datasetPage, datasetsPage } from "./datasets.js";
import { errorBox, h } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { modelsPage } from "./models.js";
import { settingsPage } from "./settings.js";

const main = document.getElementById("main");
let leave = null;

async function show() {
  if (leave) leave();
  leave = null;
  const [route, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, id] = route.split("/").map(decodeURIComponent);
  const params = new URLSearchParams(query);
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === (page || "models")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  document.title = `graft · ${page || "models"}`;
  try {
    if (page === "datasets" && id) leave = await datasetPage(main, id);
    else if (page === "datasets") leave = await datasetsPage(main);
    else if (page === "jobs" && id) leave = await jobPage(main, id);
    else if (page === "jobs") leave = await jobsPage(main, params);
    else if (page === "settings") leave = settingsPage(main);
    else leave = await modelsPage(main, params);
  } catch (error) {
    main.append(errorBox(error));
    if (error instanceof ApiError && error.status === 401) {
      main.append(h("p", {}, "Enter the key when asked, or on the ", h("a", { href: "#/settings" }, "Settings"), " page."));
    }
  }
}

// A 401 from any call: ask for the key, then show the page again with it.
const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
document.addEventListener("graft:need-key", (event) => {
  if (dialog.open) return;
  document.getElementById("key-why").textContent = event.detail
    ? `This server asks for an API key: ${event.detail}`
    : "This server asks for an API key.";
  keyInput.value = "";
  dialog.showModal();
  keyInput.focus();
});
document.getElementById("key-form").addEventListener("submit", () => {
  setApiKey(keyInput.value.trim());
  show();
});
document.getElementById("key-cancel").addEventListener("click", () => dialog.close());

window.addEventListener("hashchange", show);
show();
