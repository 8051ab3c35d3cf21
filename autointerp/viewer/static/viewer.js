// The viewer's few behaviours: a hover read-out of token activations, an attention head's sources, the
// live text and steer boxes, and the top output tokens (both need `serve --live`). Token text is always
// set as text, never as HTML.
"use strict";

// An attention head's example (.toks.attn): each token's data-src lists "index:weight" of the earlier
// tokens it attends to most. Hovering a token highlights them (weight shown above each); a click pins it.
function sourcesOf(dst) {
  const toks = dst.parentElement.children;
  return (dst.dataset.src || "").split(" ").filter(Boolean).map((pair) => {
    const [pos, w] = pair.split(":");
    return {tok: toks[Number(pos)], w: Number(w)};
  }).filter((s) => s.tok);
}

function clearSources(box) {
  for (const t of box.querySelectorAll(".tok.src, .tok.dst")) {
    t.classList.remove("src", "dst");
    delete t.dataset.w;
    t.style.removeProperty("--w");
  }
}

function showSources(dst) {
  const box = dst.parentElement;
  clearSources(box);
  dst.classList.add("dst");
  for (const s of sourcesOf(dst)) {
    s.tok.classList.add("src");
    s.tok.dataset.w = s.w.toFixed(2);
    s.tok.style.setProperty("--w", s.w);
  }
}

document.addEventListener("click", (ev) => {
  const t = ev.target.closest(".toks.attn .tok");
  if (!t) return;
  const box = t.parentElement;
  if (box.classList.contains("pinned") && t.classList.contains("dst")) {
    box.classList.remove("pinned");
    clearSources(box);
    return;
  }
  box.classList.add("pinned");
  showSources(t);
});

document.addEventListener("mouseout", (ev) => {
  const box = ev.target.closest(".toks.attn");
  if (box && !box.classList.contains("pinned") && !box.contains(ev.relatedTarget)) clearSources(box);
});

const tip = document.getElementById("tip");
document.addEventListener("mouseover", (ev) => {
  const t = ev.target.closest(".tok");
  if (!t) { tip.hidden = true; return; }
  let text = JSON.stringify(t.textContent) + "  " + (t.title || t.dataset.act);
  if (t.parentElement.classList.contains("attn")) {
    if (!t.parentElement.classList.contains("pinned")) showSources(t);
    const src = sourcesOf(t).map((s) => JSON.stringify(s.tok.textContent) + " " + s.w.toFixed(2));
    text += src.length ? "  attends to " + src.join(", ") : "  no source kept (BOS and weights under 0.005 are left out)";
  }
  tip.textContent = text;
  const r = t.getBoundingClientRect();
  tip.style.left = r.left + "px";
  tip.style.top = (r.bottom + 4) + "px";
  tip.hidden = false;
});

function tokenSpans(tokens) {
  const box = document.createElement("span");
  box.className = "toks";
  for (const t of tokens) {
    const s = document.createElement("span");
    s.className = "tok" + (t.peak ? " peak" : "");
    s.textContent = t.text;
    s.dataset.act = t.act;
    s.title = String(t.act);
    s.style.setProperty("--a", t.alpha);
    box.appendChild(s);
  }
  return box;
}

const unitEl = document.getElementById("unit-id");
const unitPath = unitEl ? encodeURIComponent(unitEl.dataset.unit).replace(/%2F/g, "/") : null;

async function post(url, body) {
  const res = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || data.detail || res.statusText);
  return data;
}

function showError(box, err) {
  box.replaceChildren();
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = err.message;
  box.appendChild(p);
}

// A form that posts to the live model: `run(out)` fills `out`, an error shows in it.
function liveBox(formId, outId, busy, run) {
  const form = document.getElementById(formId);
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById(outId);
    out.textContent = busy;
    try { await run(out); } catch (err) { showError(out, err); }
  });
}

liveBox("live-form", "live-out", "running…", async (out) => {
  const data = await post("/api/live/" + unitPath, {text: document.getElementById("live-text").value});
  const head = document.createElement("span");
  head.className = "exhead";
  head.textContent = "max " + data.max_act;
  out.replaceChildren(head, tokenSpans(data.tokens));
});

liveBox("steer-form", "steer-out", "generating…", async (out) => {
  const clamp = parseFloat(document.getElementById("steer-clamp").value);
  const data = await post("/api/steer/" + unitPath, {
    text: document.getElementById("steer-text").value, clamp: Number.isFinite(clamp) ? clamp : null});
  out.replaceChildren();
  for (const [label, text] of [["without", data.plain], ["clamped to " + data.clamp, data.steered]]) {
    const h = document.createElement("h3"); h.textContent = label;
    const p = document.createElement("p"); p.className = "completion"; p.textContent = data.prompt + text;
    out.append(h, p);
  }
});

const logitsNote = document.getElementById("logits-note");
if (logitsNote && unitPath) {
  fetch("/api/logits/" + unitPath).then((r) => r.json()).then((data) => {
    if (data.error || data.note) { logitsNote.textContent = "Not available: " + (data.error || data.note) + "."; return; }
    logitsNote.textContent = "The unit's output direction through the unembedding.";
    for (const [id, rows] of [["promoted", data.promoted], ["suppressed", data.suppressed]]) {
      const ol = document.getElementById(id);
      for (const row of rows) {
        const li = document.createElement("li");
        li.textContent = JSON.stringify(row.token) + "  " + row.value;
        ol.appendChild(li);
      }
    }
  }).catch((err) => { logitsNote.textContent = "Not available: " + err.message; });
}

// The chat panel (`serve --live`): each question goes to the agent; its tool calls, one line each (the
// result folded), then its answer. The conversation id carries over to the next question.
const chatForm = document.getElementById("chat-form");
if (chatForm && unitPath) {
  let conversation = null;
  const log = document.getElementById("chat-log");
  const line = (cls, text) => {
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    log.appendChild(p);
    return p;
  };
  chatForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const box = document.getElementById("chat-text");
    const button = chatForm.querySelector("button");
    const question = box.value.trim();
    if (!question) return;
    line("chat-q", question);
    const wait = line("note chat-wait", "the agent is working…");
    button.disabled = true;
    try {
      const data = await post("/api/chat/" + unitPath, {question, conversation});
      conversation = data.conversation;
      document.getElementById("chat-conversation").textContent = "conversation " + conversation;
      wait.remove();
      for (const step of data.steps) {
        if (step.tool === "answer" && !step.error) continue;
        const d = document.createElement("details");
        d.className = "chat-step" + (step.error ? " failed" : "");
        const s = document.createElement("summary");
        s.textContent = step.id + " " + (step.tool || "(no action)") + " " + JSON.stringify(step.arguments);
        const pre = document.createElement("pre");
        pre.textContent = (step.thought ? step.thought + "\n" : "") + (step.error || step.result);
        d.append(s, pre);
        log.appendChild(d);
      }
      if (data.answer !== null) line("chat-a", data.answer);
      if (data.note) line("error", data.note);
      if (data.hypothesis) line("note chat-h", "hypothesis: " + data.hypothesis);
      box.value = "";
    } catch (err) {
      wait.remove();
      line("error", err.message);
    } finally {
      button.disabled = false;
    }
  });
}
