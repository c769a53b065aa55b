// The aigc playground: talks to the same OpenAI routes any client uses.
const $ = (id) => document.getElementById(id);
let models = [];
let running = null; // the AbortController of the completion streaming now

function headers() {
  const key = $("api-key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

async function failure(response) {
  try { return (await response.json()).error.message; } catch { return `HTTP ${response.status}`; }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { $("status").textContent = await failure(response); return; }
  models = (await response.json()).data;
  $("model").replaceChildren(...models.map((m) => new Option(`${m.id} (${m.kind})`, m.id)));
  showModel();
}

function showModel() {
  const model = models.find((m) => m.id === $("model").value);
  if (!model) return;
  $("text-panel").hidden = model.kind !== "gpt";
  $("image-panel").hidden = model.kind !== "gan";
  if (model.kind === "gan") {
    const classes = model.classes || [];
    $("class").replaceChildren(...(classes.length ? classes : ["any"]).map((c) => new Option(c, c)));
  }
  $("status").textContent = "";
}

async function generate() {
  $("output").textContent = $("prompt").value;
  $("status").textContent = "";
  running = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), signal: running.signal,
      body: JSON.stringify({
        model: $("model").value, prompt: $("prompt").value, stream: true,
        temperature: Number($("temperature").value), top_p: Number($("top-p").value),
        max_tokens: Number($("max-tokens").value),
      }),
    });
    if (!response.ok) { $("status").textContent = await failure(response); return; }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") { $("status").textContent = "done"; continue; }
        const choice = JSON.parse(data).choices[0];
        if (choice) $("output").textContent += choice.text;
      }
    }
  } catch (error) {
    $("status").textContent = error.name === "AbortError" ? "stopped" : String(error);
  } finally {
    running = null;
    $("generate").disabled = false; $("stop").disabled = true;
  }
}

async function draw() {
  $("status").textContent = "";
  const chosen = $("class").value;
  const response = await fetch("/v1/images/generations", {
    method: "POST", headers: headers(),
    body: JSON.stringify({
      model: $("model").value, prompt: chosen === "any" ? "" : chosen, n: Number($("count").value),
      seed: Number($("seed").value), response_format: "b64_json",
    }),
  });
  if (!response.ok) { $("status").textContent = await failure(response); return; }
  const images = (await response.json()).data;
  $("grid").replaceChildren(...images.map((image) => {
    const img = new Image();
    img.src = `data:image/png;base64,${image.b64_json}`;
    img.alt = `generated ${chosen}`;
    return img;
  }));
}

$("model").addEventListener("change", showModel);
$("api-key").addEventListener("change", loadModels);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => running && running.abort());
$("draw").addEventListener("click", draw);
loadModels();
