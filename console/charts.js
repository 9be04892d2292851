// Two pictures the job view draws as SVG: curves per epoch, and the confusion matrix.

import { h, s } from "./dom.js";

const COLOURS = { train: "#2456d6", valid: "#d2691e" };

/**
 * A line chart of `series` ([{name, colour, dash, points: [[x, y]…]}]) over epochs, with a
 * vertical rule at `mark` (the first epoch of phase 2) when given.
 */
export function lineChart({ title, series, mark, yMax }) {
  const width = 520, height = 240, left = 46, right = 12, top = 14, bottom = 34;
  const all = series.flatMap((line) => line.points);
  const xMax = Math.max(2, ...all.map(([x]) => x));
  const yTop = yMax ?? Math.max(1e-6, ...all.map(([, y]) => y)) * 1.08;
  const X = (x) => left + ((x - 1) / (xMax - 1)) * (width - left - right);
  const Y = (y) => top + (1 - y / yTop) * (height - top - bottom);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  for (let i = 0; i <= 4; i++) {
    const y = (yTop * i) / 4;
    svg.append(s("line", { x1: left, x2: width - right, y1: Y(y), y2: Y(y), stroke: "#e3e6ec" }));
    svg.append(s("text", { x: left - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6475" }, y.toFixed(2)));
  }
  for (const x of ticks(xMax)) {
    svg.append(s("text", { x: X(x), y: height - bottom + 16, "text-anchor": "middle", "font-size": 11, fill: "#5b6475" }, x));
  }
  svg.append(s("text", { x: width / 2, y: height - 4, "text-anchor": "middle", "font-size": 11, fill: "#5b6475" }, "epoch"));
  if (mark) {
    svg.append(s("line", { x1: X(mark), x2: X(mark), y1: top, y2: height - bottom, stroke: "#8a5a00", "stroke-dasharray": "4 3", class: "phase2-mark" }));
    svg.append(s("text", { x: X(mark) + 4, y: top + 10, "font-size": 11, fill: "#8a5a00" }, "phase 2"));
  }
  for (const line of series) {
    if (line.points.length === 0) continue;
    const d = line.points.map(([x, y], i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
    svg.append(s("path", { d, fill: "none", stroke: line.colour, "stroke-width": 2, "stroke-dasharray": line.dash || null }));
    const radius = line.points.length > 100 ? 1 : 2.6;
    for (const [x, y] of line.points) {
      svg.append(s("circle", { cx: X(x), cy: Y(y), r: radius, fill: line.colour, class: `point point-${line.key}` }));
    }
  }
  const legend = h("div", { class: "legend" }, series.map((line) =>
    h("span", {}, h("i", { style: `background:${line.colour}` }), line.name)));
  return h("figure", { class: "card" }, h("figcaption", {}, h("strong", {}, title)), svg, legend);
}

function ticks(xMax) {
  const step = Math.max(1, Math.ceil(xMax / 10));
  const out = [];
  for (let x = 1; x <= xMax; x += step) out.push(x);
  return out;
}

/** Loss and accuracy series from epoch points ({epoch, phase, train_loss, …}). */
export function curves(points) {
  const series = (key, name, colour, dash) => ({
    key, name, colour, dash,
    points: points.filter((p) => typeof p[key] === "number").map((p) => [p.x, p[key]]),
  });
  const phase2 = points.find((p) => p.phase === "fine-tuning");
  return [
    lineChart({
      title: "Loss", mark: phase2?.x,
      series: [series("train_loss", "train loss", COLOURS.train), series("valid_loss", "valid loss", COLOURS.valid, "5 3")],
    }),
    lineChart({
      title: "Accuracy", yMax: 1, mark: phase2?.x,
      series: [series("train_accuracy", "train accuracy", COLOURS.train), series("valid_accuracy", "valid accuracy", COLOURS.valid, "5 3")],
    }),
  ];
}

/**
 * The confusion matrix as a heat map: rows are true classes, columns predicted ones; each
 * off-diagonal cell with images is a button calling `open(trueClass, predictedClass)`.
 */
export function confusionHeatMap(confusion, classes, open) {
  const max = Math.max(1, ...confusion.flat());
  const head = h("tr", {}, h("th", { scope: "col" }, "true ↓ / predicted →"),
    classes.map((name) => h("th", { scope: "col", title: name }, name)));
  const rows = confusion.map((row, t) => h("tr", {},
    h("th", { scope: "row", title: classes[t] }, classes[t]),
    row.map((count, p) => {
      const share = count / max;
      const hue = t === p ? "36, 86, 214" : "179, 38, 30";
      const style = `background: rgba(${hue}, ${(0.08 + 0.85 * share).toFixed(3)})`;
      const label = `${count} image(s) of ${classes[t]} predicted as ${classes[p]}`;
      const cell = t !== p && count > 0
        ? h("button", { type: "button", style, class: `cell${share > 0.5 ? " dark" : ""}`, "data-true": t, "data-predicted": p,
            "aria-label": `${label}: show them`, onclick: () => open(t, p) }, count)
        : h("button", { type: "button", style, class: `cell${share > 0.5 ? " dark" : ""}`, disabled: true, "aria-label": label }, count);
      return h("td", {}, cell);
    })));
  return h("div", { class: "table-wrap" }, h("table", { class: "heat", "aria-label": "Confusion matrix" }, h("thead", {}, head), h("tbody", {}, rows)));
}
