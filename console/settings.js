// Settings: the API key, kept in this browser tab's session only.

import { apiKey, setApiKey } from "./api.js";
import { h } from "./dom.js";

export function settingsPage(main) {
  const input = h("input", { type: "password", id: "settings-key", autocomplete: "off", value: apiKey() });
  const status = h("p", { class: "muted", id: "settings-status", "aria-live": "polite" },
    apiKey() ? "A key is set for this browser session." : "No key is set.");
  const form = h("form", { class: "card", "aria-labelledby": "settings-title" },
    h("h2", { id: "settings-title" }, "API key"),
    h("p", { class: "hint" }, "Sent with every call as a bearer token. Kept in this tab's session storage: it is gone when the tab closes."),
    h("label", { for: "settings-key" }, "Key"), input,
    h("div", { class: "actions" },
      h("button", { type: "submit" }, "Save"),
      h("button", { type: "button", class: "secondary", onclick: () => {
        setApiKey("");
        input.value = "";
        status.textContent = "The key is forgotten.";
      } }, "Forget the key")),
    status);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey(input.value.trim());
    status.textContent = input.value.trim() ? "Saved for this browser session." : "No key is set.";
  });
  main.append(h("h1", {}, "Settings"), form);
}
