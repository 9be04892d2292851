// Models: the list, and trying one on photos dropped, pasted or chosen.

import { api } from "./api.js";
import { errorBox, h, percent, s } from "./dom.js";

const TOP_K = 5;

export async function modelsPage(main, params) {
  main.append(h("h1", {}, "Models"));
  const { models } = await api("/v1/models");
  const names = models.map((m) => m.name);
  const chosen = names.includes(params.get("model")) ? params.get("model") : names[0];
  const byName = new Map(models.map((m) => [m.name, m]));

  const rows = models.map((m) => h("tr", {},
    h("td", {}, h("a", { href: `#/models?model=${encodeURIComponent(m.name)}` }, m.name)),
    h("td", {}, m.kind === "trained" ? m.base_model : "pretrained"),
    h("td", {}, task(m)),
    h("td", { class: "num" }, Array.isArray(m.classes) ? m.classes.length : m.classes ?? "–"),
    h("td", {}, precision(m)),
    h("td", {}, testFigures(m)),
    h("td", {}, m.status || "–")));
  main.append(h("div", { class: "card table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Name", "Base", "Task", "Classes", "Precision", "Test metrics", "Status"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows))));
  if (names.length === 0) {
    main.append(h("p", {}, "No models yet: put a manifest in the models folder, or train one on the Jobs page."));
    return;
  }

  const select = h("select", { id: "try-model" }, names.map((n) => h("option", { value: n, selected: n === chosen }, n)));
  const results = h("div", { id: "try-results" });
  const input = h("input", { type: "file", id: "try-files", accept: "image/*", multiple: true });
  const drop = h("div", { class: "drop", id: "drop-zone" },
    h("p", {}, "Drop photos here, or paste one (Ctrl+V)."),
    h("label", { for: "try-files" }, "Or choose photos"), input);
  const run = (files) => {
    const model = byName.get(select.value);
    for (const file of files) tryPhoto(model, file, results);
  };
  input.addEventListener("change", () => { run([...input.files]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    run([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || f.type === ""));
  });
  const onPaste = (e) => {
    const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length && document.body.contains(drop)) run(files);
  };
  document.addEventListener("paste", onPaste);
  main.append(h("section", { class: "card", "aria-labelledby": "try-title" },
    h("h2", { id: "try-title" }, "Try a model"),
    h("label", { for: "try-model" }, "Model"), select,
    h("div", { style: "margin-top:12px" }, drop), results));
  return () => document.removeEventListener("paste", onPaste);
}

function task(model) {
  if (model.kind === "trained") return model.task;
  return "classify";
}

function precision(model) {
  if (model.kind === "trained") return model.evaluation?.quantization?.served || "fp32";
  return model.precision || "fp32";
}

function testFigures(model) {
  const test = model.evaluation?.test;
  if (!test) return model.description || "–";
  const parts = [`accuracy ${percent(test.accuracy)}`];
  const iou = model.evaluation?.test_boxes?.mean_iou;
  if (typeof iou === "number") parts.push(`mean IoU ${iou.toFixed(3)}`);
  return parts.join(", ");
}

async function tryPhoto(model, file, results) {
  const localize = model.kind === "trained" && model.task === "localize";
  const url = URL.createObjectURL(file);
  const photo = h("div", { class: "photo" }, h("img", { src: url, alt: `The photo ${file.name}` }));
  const answer = h("div", {}, h("p", { class: "muted" }, `Sending ${file.name}…`));
  const item = h("div", { class: "result" }, photo, answer);
  results.prepend(item);
  // top_k may not pass the model's class count.
  const classes = Array.isArray(model.classes) ? model.classes.length : model.classes;
  const topK = Math.max(1, Math.min(TOP_K, classes || TOP_K));
  const path = `/v1/models/${encodeURIComponent(model.name)}/${localize ? "localize" : "classify"}?top_k=${topK}`;
  const started = performance.now();
  try {
    const body = await api(path, { method: "POST", body: file, headers: { "content-type": file.type || "application/octet-stream" } });
    const ms = performance.now() - started;
    const predictions = localize ? body.localizations[0].classes : body.predictions[0];
    answer.replaceChildren(
      h("h3", { class: "top-label" }, predictions[0]?.label ?? "–"),
      bars(predictions),
      h("p", { class: "muted latency" }, `${file.name} · answered in ${ms.toFixed(0)} ms`));
    if (localize) photo.append(boxOverlay(body.localizations[0]));
  } catch (error) {
    answer.replaceChildren(errorBox(error));
  }
}

function bars(predictions) {
  return h("ul", { class: "bars", "aria-label": "Top classes" }, predictions.map((p) =>
    h("li", {},
      h("span", { class: "label", title: p.class_id }, p.label),
      h("span", { class: "bar", role: "img", "aria-label": `${p.label}: ${percent(p.score)}` },
        h("span", { style: `width:${Math.max(0.5, p.score * 100).toFixed(1)}%` })),
      h("span", { class: "num score" }, percent(p.score)))));
}

/** The predicted box over the photo, in the original image's pixels (its viewBox). */
function boxOverlay(localization) {
  const [width, height] = localization.image_size;
  const { x_min, y_min, x_max, y_max } = localization.box;
  const label = localization.classes[0]?.label ?? "";
  return s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-label": `Box around ${label}`, role: "img" },
    s("rect", {
      class: "predicted-box", x: x_min, y: y_min, width: x_max - x_min, height: y_max - y_min,
      fill: "none", stroke: "#ffbf47", "stroke-width": Math.max(2, width / 100),
      "data-x-min": x_min, "data-y-min": y_min, "data-x-max": x_max, "data-y-max": y_max,
    }));
}
