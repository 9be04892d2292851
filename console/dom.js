// Building the page from data without innerHTML: every text goes in as text.

const SVG = "http://www.w3.org/2000/svg";

/** An element: `h("td", {class: "num"}, "0.93")`; attributes starting with `on` are listeners. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  return fill(element, attrs, children);
}

/** An SVG element, as `h`. */
export function s(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

function fill(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    // Through the CSSOM: the Content-Security-Policy refuses style attributes in markup.
    else if (name === "style") element.style.cssText = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** A number as a percentage with one decimal. */
export function percent(value) {
  return value === undefined || value === null ? "–" : `${(value * 100).toFixed(1)} %`;
}

/** A Unix time in milliseconds as local date and time. */
export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

/** Seconds as "1 min 05 s" or "12 s". */
export function duration(seconds) {
  if (seconds === undefined || seconds === null || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

/** A message box for an error (an ApiError's problem detail, or any error). */
export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}
