// Jobs: start one from a form, follow it live (progress, ETA, curves, cancel), and read what
// it learned (per-class figures, confusion matrix with the misclassified images, warnings).

import { api, fetchRaw, follow } from "./api.js";
import { confusionHeatMap, curves } from "./charts.js";
import { thumbnail } from "./datasets.js";
import { duration, errorBox, h, percent, when } from "./dom.js";

const ENDED = ["succeeded", "failed", "cancelled"];

export async function jobsPage(main, params) {
  main.append(h("h1", {}, "Jobs"));
  const [{ datasets }, { models }, { jobs }] = await Promise.all([
    api("/v1/datasets?limit=200"), api("/v1/models"), api("/v1/jobs?limit=50"),
  ]);
  main.append(jobForm(datasets, models.filter((m) => m.kind === "pretrained"), params.get("dataset")));
  const rows = jobs.map((j) => h("tr", {},
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.model)),
    h("td", {}, h("span", { class: `pill ${j.state}` }, j.state)),
    h("td", {}, j.base_model),
    h("td", {}, j.evaluation?.test ? percent(j.evaluation.test.accuracy) : "–"),
    h("td", {}, when(j.created_at))));
  main.append(h("section", { class: "card", "aria-labelledby": "job-list" }, h("h2", { id: "job-list" }, "Recent jobs"),
    jobs.length === 0 ? h("p", {}, "None yet.") : h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Model", "State", "Base", "Test accuracy", "Submitted"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)))));
}

function field(id, label, input, hint) {
  input.id = id;
  return [h("label", { for: id }, label), input, hint ? h("p", { class: "hint" }, hint) : null];
}

function check(id, label, checked = false) {
  const input = h("input", { type: "checkbox", id, checked });
  return { input, element: h("label", { class: "check", for: id }, input, label) };
}

function jobForm(datasets, bases, preferred) {
  const dataset = h("select", { required: true }, datasets.map((d) =>
    h("option", { value: d.id, selected: d.id === preferred, "data-task": d.task }, `${d.name} (${d.images} images, ${d.task})`)));
  const base = h("select", { required: true }, bases.map((m) => h("option", { value: m.name }, m.name)));
  const name = h("input", { type: "text", placeholder: "named after the job when left empty" });
  const byEpochs = check("job-by-epochs", "Train the head by epochs (otherwise the convex solver fits a linear head in one go)");
  const epochs = h("input", { type: "number", min: 1, max: 10000, value: 20 });
  const rate = h("input", { type: "number", min: 0, step: "any", value: 0.001 });
  const early = check("job-early", "Stop early when validation accuracy stops improving (patience 5)", true);
  const unfreeze = check("job-unfreeze", "Also tune the top of the base (phase 2)");
  const blocks = h("input", { type: "number", min: 1, max: 64, value: 1 });
  const augment = check("job-augment", "Augment the training images (flip, crop, brightness, contrast; 3 variants each)");
  const localize = check("job-localize", "Localize: train a box head too (box datasets)");
  const quantize = check("job-quantize", "Quantize: serve an INT8 base when test accuracy drops ≤ 1 point");
  const syncTask = () => { localize.input.checked = dataset.selectedOptions[0]?.dataset.task === "localize"; };
  dataset.addEventListener("change", syncTask);
  syncTask();
  const status = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Start job");
  const form = h("form", { class: "card", id: "job-form", "aria-labelledby": "job-new" },
    h("h2", { id: "job-new" }, "Start a job"),
    field("job-dataset", "Dataset", dataset),
    field("job-base", "Base model", base),
    field("job-name", "New model's name (optional)", name),
    h("details", {}, h("summary", {}, "Advanced options"),
      byEpochs.element, field("job-epochs", "Epochs", epochs), field("job-rate", "Learning rate", rate), early.element,
      unfreeze.element, field("job-blocks", "Blocks to unfreeze", blocks),
      augment.element, localize.element, quantize.element),
    h("div", { class: "actions" }, submit), status);
  if (datasets.length === 0) status.append(h("p", {}, "Upload a dataset first, on the Datasets page."));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const spec = { dataset: dataset.value, base_model: base.value };
    if (name.value.trim()) spec.name = name.value.trim();
    if (byEpochs.input.checked) {
      spec.epochs = Number(epochs.value);
      spec.learning_rate = Number(rate.value);
      if (!early.input.checked) spec.early_stopping = null;
    }
    if (unfreeze.input.checked) spec.unfreeze = { blocks: Number(blocks.value) };
    if (augment.input.checked) spec.augment = {};
    if (localize.input.checked) spec.task = "localize";
    if (quantize.input.checked) spec.quantize = true;
    submit.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(spec), headers: { "content-type": "application/json" } });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      status.replaceChildren(errorBox(error));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export async function jobPage(main, id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  let job = await api(path);
  const state = h("span", { class: `pill ${job.state}`, id: "job-state" }, job.state);
  const phase = h("p", { id: "job-phase" });
  const bar = h("progress", { id: "job-progress", max: 1, "aria-label": "Job progress" });
  const eta = h("p", { class: "muted", id: "job-eta" });
  const cancel = h("button", { type: "button", class: "danger", id: "job-cancel" }, "Cancel job");
  const charts = h("div", { class: "grid2", id: "job-curves" });
  const results = h("div", { id: "job-results" });
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    h("h1", {}, job.model, " ", state),
    h("p", { class: "muted" }, `${job.base_model} on `, h("a", { href: `#/datasets/${encodeURIComponent(job.dataset_id)}` }, "its dataset"),
      ` · submitted ${when(job.created_at)}`),
    h("section", { class: "card", "aria-label": "Progress" }, phase, bar, eta, h("div", { class: "actions" }, cancel)),
    charts, results);

  const points = [];
  let phase1Epochs = 0;
  const draw = () => charts.replaceChildren(...(points.length ? curves(points) : []));
  const setState = (value) => {
    state.textContent = value;
    state.className = `pill ${value}`;
    cancel.hidden = ENDED.includes(value);
  };
  const showProgress = (progress) => {
    const name = progress.phase || "";
    phase.textContent = `Phase: ${name}`;
    const counted = progress[name];
    if (progress.epochs) {
      bar.max = progress.epochs;
      bar.value = progress.epoch;
      phase.textContent = `Phase: ${name}, epoch ${progress.epoch} of ${progress.epochs}`;
    } else if (counted && counted.total) {
      bar.max = counted.total;
      bar.value = counted.done;
      phase.textContent = `Phase: ${name}, ${counted.done} of ${counted.total}`;
    } else if (ENDED.includes(name)) {
      bar.max = 1;
      bar.value = 1;
    } else {
      bar.removeAttribute("value");
    }
    eta.textContent = typeof progress.eta_seconds === "number" ? `About ${duration(progress.eta_seconds)} left` : "";
  };
  setState(job.state);
  showProgress(job.progress || {});
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await api(`${path}/cancel`, { method: "POST" });
      phase.textContent = job.state === "cancelled" ? "Cancelled." : "Asked to stop; it stops at its next check.";
    } catch (error) {
      phase.replaceChildren(errorBox(error));
    } finally {
      cancel.disabled = false;
    }
  });

  const controller = new AbortController();
  const finish = async () => {
    job = await api(path);
    setState(job.state);
    showProgress(job.progress || { phase: job.state });
    if (job.state === "succeeded") results.replaceChildren(...outcome(job));
    if (job.state === "failed") results.replaceChildren(h("p", { class: "error card" }, `The job failed: ${job.failure || "no reason given"}`));
    if (job.state === "succeeded" && points.length === 0) {
      charts.replaceChildren(h("p", { class: "muted card" }, "The convex solver fitted the head in one go: there are no epochs to plot."));
    }
  };
  const onEvent = (type, data) => {
    if (type === "state") setState(data.state);
    if (type === "progress") showProgress(data);
    if (type === "epoch") {
      if (data.phase !== "fine-tuning") phase1Epochs = Math.max(phase1Epochs, data.epoch);
      const x = data.phase === "fine-tuning" ? phase1Epochs + data.epoch : data.epoch;
      const last = data.last || {};
      points.push({ x, phase: data.phase, train_loss: last.train_loss, valid_loss: last.valid_loss,
        train_accuracy: last.train_accuracy, valid_accuracy: last.valid_accuracy });
      showProgress(data);
      draw();
    }
  };
  follow(`${path}/events`, onEvent, controller.signal)
    .then(finish)
    .catch((error) => { if (error.name !== "AbortError") results.replaceChildren(errorBox(error)); });
  return () => controller.abort();
}

function outcome(job) {
  const evaluation = job.evaluation || {};
  const test = evaluation.test || {};
  const classes = evaluation.classes || [];
  const out = [];
  const download = h("button", { type: "button", class: "secondary", id: "job-download" }, "Download ONNX");
  download.addEventListener("click", () => downloadOnnx(job.model, download));
  out.push(h("section", { class: "card", "aria-labelledby": "job-summary" },
    h("h2", { id: "job-summary" }, "Result"),
    h("p", {}, `Test accuracy ${percent(test.accuracy)} on ${test.count ?? "–"} held-out images`,
      typeof evaluation.test_boxes?.mean_iou === "number" ? `, mean box IoU ${evaluation.test_boxes.mean_iou.toFixed(3)}` : "",
      evaluation.quantization ? ` · serving ${evaluation.quantization.served}` : ""),
    h("div", { class: "actions" },
      h("a", { class: "button", id: "job-try", href: `#/models?model=${encodeURIComponent(job.model)}` }, "Try it"), download)));
  if ((evaluation.warnings || []).length) {
    out.push(h("section", { class: "card", "aria-labelledby": "job-warnings" }, h("h2", { id: "job-warnings" }, "Warnings"),
      h("ul", {}, evaluation.warnings.map((w) => h("li", { class: "warn" }, w)))));
  }
  if (test.per_class) {
    out.push(h("section", { class: "card", "aria-labelledby": "job-per-class" }, h("h2", { id: "job-per-class" }, "Per class"),
      h("div", { class: "table-wrap" }, h("table", { id: "per-class" },
        h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Test images"].map((t, i) => h("th", { scope: "col", class: i ? "num" : null }, t)))),
        h("tbody", {}, test.per_class.map((m, i) => h("tr", {}, h("th", { scope: "row" }, classes[i]),
          h("td", { class: "num" }, percent(m.precision)), h("td", { class: "num" }, percent(m.recall)),
          h("td", { class: "num" }, percent(m.f1)), h("td", { class: "num" }, m.support))))))));
  }
  if (test.confusion) {
    const wrong = h("div", { id: "misclassified", "aria-live": "polite" });
    const open = (t, p) => showMisclassified(job, classes, t, p, wrong);
    out.push(h("section", { class: "card", "aria-labelledby": "job-confusion" }, h("h2", { id: "job-confusion" }, "Confusion matrix"),
      h("p", { class: "hint" }, "Rows are the true classes, columns the predicted ones. Open a red cell to see its images."),
      confusionHeatMap(test.confusion, classes, open), wrong));
  }
  return out;
}

async function showMisclassified(job, classes, t, p, into) {
  into.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const page = await api(`/v1/jobs/${encodeURIComponent(job.id)}/misclassified?true_class=${t}&predicted_class=${p}&limit=200`);
    const grid = h("div", { class: "thumbs" }, page.images.map((m) =>
      thumbnail(page.dataset_id, m.sha256, `${m.path}: ${classes[m.predicted_class]} ${percent(m.score)}`)));
    into.replaceChildren(h("h3", {}, `${classes[t]} taken for ${classes[p]} (${page.total})`), grid);
  } catch (error) {
    into.replaceChildren(errorBox(error));
  }
}

async function downloadOnnx(model, button) {
  button.disabled = true;
  try {
    const response = await fetchRaw(`/v1/models/${encodeURIComponent(model)}/onnx`);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `${model}.onnx` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    button.after(errorBox(error));
  } finally {
    button.disabled = false;
  }
}
