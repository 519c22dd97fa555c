// Small DOM helpers. Everything from the server (file names, OCR text, answers) goes in as text nodes or
// attribute values, never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function fileName(path) {
  return String(path || "").split(/[\\/]/).pop();
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function shorten(text, max) {
  const s = String(text || "").replace(/\s+/g, " ").trim();
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** "text:text>image" (space:query>index) in words, for a tooltip. */
export function listInWords(key) {
  const match = /^([^:]+):([^>]+)>(.+)$/.exec(key);
  if (!match) return key;
  const [, space, query, index] = match;
  return `${query} query, ${space} space, ${index} index`;
}

/** A label element turned into a drop zone for the file input it holds; returns a reader of the file. */
export function imageDrop(label, onChange) {
  const input = label.querySelector("input[type=file]");
  const hint = label.querySelector(".drop-hint");
  const preview = label.querySelector(".drop-preview");
  let file = null;
  let url = null;

  function show(next) {
    file = next;
    if (url) URL.revokeObjectURL(url);
    url = file ? URL.createObjectURL(file) : null;
    hint.hidden = Boolean(file);
    preview.hidden = !file;
    if (file) {
      preview.querySelector("img").src = url;
      preview.querySelector(".drop-name").textContent = file.name;
    } else {
      input.value = "";
    }
    onChange?.(file);
  }

  input.addEventListener("change", () => show(input.files[0] || null));
  preview.querySelector(".drop-clear").addEventListener("click", (event) => {
    event.preventDefault();
    show(null);
    input.focus();
  });
  for (const name of ["dragenter", "dragover"]) {
    label.addEventListener(name, (event) => {
      event.preventDefault();
      label.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    label.addEventListener(name, () => label.classList.remove("over"));
  }
  label.addEventListener("drop", (event) => {
    event.preventDefault();
    const dropped = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    if (dropped) show(dropped);
  });
  return { get: () => file, clear: () => show(null) };
}
