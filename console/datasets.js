// Datasets: upload an archive with progress, the list, and one dataset's classes, thumbnails
// and rejected files.

import { api, imageUrl, upload } from "./api.js";
import { errorBox, h, when } from "./dom.js";

const THUMBS_PER_PAGE = 12;

export async function datasetsPage(main) {
  main.append(h("h1", {}, "Datasets"));
  main.append(uploadForm());
  const { datasets } = await api("/v1/datasets?limit=200");
  const rows = datasets.map((d) => h("tr", {},
    h("td", {}, h("a", { href: `#/datasets/${encodeURIComponent(d.id)}` }, d.name)),
    h("td", {}, d.task),
    h("td", { class: "num" }, d.images),
    h("td", { class: "num" }, d.classes.length),
    h("td", {}, when(d.created_at))));
  main.append(h("section", { class: "card", "aria-labelledby": "ds-list" }, h("h2", { id: "ds-list" }, "Uploaded"),
    datasets.length === 0 ? h("p", {}, "None yet.") : h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Task", "Images", "Classes", "Uploaded"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)))));
}

function uploadForm() {
  const file = h("input", { type: "file", id: "ds-archive", name: "archive", accept: ".zip,.tar,.tgz,.tar.gz", required: true });
  const name = h("input", { type: "text", id: "ds-name", name: "name", placeholder: "flowers" });
  const bar = h("progress", { id: "ds-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const status = h("p", { id: "ds-status", class: "muted", "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card", "aria-labelledby": "ds-upload" },
    h("h2", { id: "ds-upload" }, "Upload a dataset"),
    h("p", { class: "hint" }, "A .zip or .tar(.gz) with a folder per class, or images with LabelImg, VIA, COCO or CSV boxes."),
    h("label", { for: "ds-archive" }, "Archive"), file,
    h("label", { for: "ds-name" }, "Name (optional)"), name,
    h("div", { class: "actions" }, button), bar, status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file.files[0]) return;
    const body = new FormData();
    if (name.value.trim()) body.append("name", name.value.trim());
    body.append("archive", file.files[0]);
    button.disabled = true;
    bar.hidden = false;
    bar.removeAttribute("value");
    try {
      const dataset = await upload("/v1/datasets", body, (sent, total) => {
        if (total && sent < total) {
          bar.value = sent / total;
          status.textContent = `Sending: ${(sent / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`;
        } else {
          bar.removeAttribute("value");
          status.textContent = "Sent. graft is checking and storing the images…";
        }
      });
      status.textContent = `Stored ${dataset.images} images.`;
      location.hash = `#/datasets/${encodeURIComponent(dataset.id)}`;
    } catch (error) {
      bar.hidden = true;
      status.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export async function datasetPage(main, id) {
  const dataset = await api(`/v1/datasets/${encodeURIComponent(id)}`);
  main.append(h("p", {}, h("a", { href: "#/datasets" }, "← Datasets")));
  main.append(h("h1", {}, dataset.name));
  main.append(h("p", { class: "muted" }, `${dataset.images} images · ${dataset.task} · uploaded ${when(dataset.created_at)}`),
    h("div", { class: "actions" }, h("a", { class: "button", href: `#/jobs?dataset=${encodeURIComponent(dataset.id)}` }, "Train on it")));
  const counts = dataset.classes.map((c) => h("tr", {},
    h("th", { scope: "row" }, c.name),
    ["train", "valid", "test", "images"].map((split) => h("td", { class: "num" }, c[split]))));
  main.append(h("section", { class: "card", "aria-labelledby": "ds-classes" }, h("h2", { id: "ds-classes" }, "Classes"),
    h("div", { class: "table-wrap" }, h("table", { id: "class-counts" },
      h("thead", {}, h("tr", {}, ["Class", "Train", "Valid", "Test", "All"].map((t, i) => h("th", { scope: "col", class: i ? "num" : null }, t)))),
      h("tbody", {}, counts)))));
  main.append(rejected(dataset.report));
  for (const c of dataset.classes) main.append(classGrid(dataset.id, c));
}

function rejected(report) {
  const list = report?.rejected || [];
  const total = report?.rejected_total ?? list.length;
  const section = h("section", { class: "card", "aria-labelledby": "ds-rejected" },
    h("h2", { id: "ds-rejected" }, `Rejected files (${total})`));
  if (total === 0) {
    section.append(h("p", { class: "ok" }, "Every file was accepted."));
  } else {
    section.append(h("div", { class: "table-wrap" }, h("table", { id: "rejected" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Reason"))),
      h("tbody", {}, list.map((r) => h("tr", {}, h("td", {}, r.path), h("td", {}, r.reason)))))));
    if (total > list.length) section.append(h("p", { class: "muted" }, `The first ${list.length} of ${total} are listed.`));
  }
  for (const warning of report?.warnings || []) section.append(h("p", { class: "warn" }, warning));
  return section;
}

function classGrid(datasetId, c) {
  const grid = h("div", { class: "thumbs", "data-class": c.name });
  const more = h("button", { type: "button", class: "secondary" }, "Show more");
  const section = h("section", { class: "card", "aria-label": `Images of ${c.name}` }, h("h2", {}, `${c.name} (${c.images})`), grid);
  let offset = 0;
  const load = async () => {
    more.disabled = true;
    try {
      const page = await api(`/v1/datasets/${encodeURIComponent(datasetId)}/items?class=${c.index}&limit=${THUMBS_PER_PAGE}&offset=${offset}`);
      for (const item of page.items) grid.append(thumbnail(datasetId, item.sha256, `${item.path} (${item.split})`));
      offset = page.next_offset ?? offset;
      if (page.next_offset === null) more.remove();
      else if (!more.isConnected) section.append(h("div", { class: "actions" }, more));
    } catch (error) {
      section.append(errorBox(error));
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", load);
  load();
  return section;
}

/** A figure with the item's thumbnail (fetched with the key) and its caption. */
export function thumbnail(datasetId, sha256, caption) {
  const img = h("img", { alt: caption, loading: "lazy" });
  imageUrl(`/v1/datasets/${encodeURIComponent(datasetId)}/items/${sha256}/thumbnail?size=160`)
    .then((url) => { img.src = url; })
    .catch(() => { img.alt = `${caption}: the thumbnail could not be made`; });
  return h("figure", {}, img, h("figcaption", {}, caption));
}
