// A small element builder: h("button", { type: "button", onclick }, "text").

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.includes("-") || !(name in element)) element.setAttribute(name, value === true ? "" : value);
    else element[name] = value;
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

let announcer = null;

// Says something to screen readers and sighted users alike, in the page's status line.
export function announce(text) {
  announcer ??= document.getElementById("page-status");
  announcer.textContent = text;
}
