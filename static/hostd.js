// hostd: the little plain JavaScript the pages need. No build step.
"use strict";

// Things that work only with this script (.js-only: Copy buttons, the drop hint) show now.
document.documentElement.classList.add("js");

// What a click just did, for screen readers: base.html's one polite region, never swapped
// out (a region that arrives with its text is often not read). Emptied first, so the same
// words twice ("Copied", "Copied") are said twice.
const announce = (text) => {
  const region = document.getElementById("live-status");
  if (!region || !text) return;
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 100);
};

// A URL field narrower than its URL shows its end, where the hash and name are, rather
// than the host that every field starts with.
const showEnds = (root) => {
  for (const field of root.querySelectorAll("input.url-field")) field.scrollLeft = field.scrollWidth;
};
showEnds(document);
addEventListener("resize", () => showEnds(document));
document.addEventListener("focusout", (event) => {
  if (event.target.matches?.("input.url-field")) showEnds(event.target.parentElement);
});

// Copy buttons: <button data-copy="#selector"> copies that element's text. The button's
// name stays (it says which URL); what happened is said through announce().
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value ?? source.textContent;
  try {
    await navigator.clipboard.writeText(text.trim());
    button.textContent = "Copied";
    announce("Copied");
  } catch {
    // No clipboard (a page over plain HTTP, not on localhost): select the text for Ctrl+C.
    // An <input>'s value is selected by select(); a range selects only an element's text.
    if (typeof source.select === "function") {
      source.focus();
      source.select();
    } else {
      const range = document.createRange();
      range.selectNodeContents(source);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
    button.textContent = "Selected: press Ctrl+C";
    announce("Selected: press Ctrl+C to copy");
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});

// An htmx request the server refused (a key or file that is gone, an expired form): show
// the message of the error page it answered with, rather than nothing.
document.addEventListener("htmx:responseError", (event) => {
  const box = document.getElementById("request-error");
  if (!box) return;
  const xhr = event.detail.xhr;
  const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
  const message = page.querySelector(".error-message")?.textContent?.trim();
  box.textContent = message || `The request failed (${xhr.status} ${xhr.statusText}).`;
  box.hidden = false;
});
document.addEventListener("htmx:beforeRequest", () => {
  const box = document.getElementById("request-error");
  if (box) box.hidden = true;
});

// An htmx swap takes the clicked button away with the old list or row: say what happened
// (the list's own [data-announce], else the button's or form's data-done) and put focus
// where the user was, not back at the top of the page.
let clicked = null;
document.addEventListener("htmx:beforeRequest", (event) => {
  const elt = event.detail.elt;
  const row = elt.closest("tr");
  clicked = {
    done: elt.closest("[data-done]")?.dataset.done,
    index: row ? [...row.parentElement.children].indexOf(row) : -1,
  };
});
const focusFirst = (...candidates) => {
  const target = candidates.find(Boolean);
  if (target) target.focus();
};
document.addEventListener("htmx:afterSettle", (event) => {
  const id = event.detail.target?.id;
  const fresh = id && document.getElementById(id);
  if (!fresh || !clicked) return;
  const { done, index } = clicked;
  clicked = null;
  announce(fresh.querySelector("[data-announce]")?.textContent || done);
  if (id === "file-list") {  // a file deleted: the next one's Delete, or the heading
    const buttons = [...fresh.querySelectorAll("#file-rows button.delete-file")];
    focusFirst(buttons[Math.min(index, buttons.length - 1)], document.getElementById("files-title"));
  } else if (id === "api-keys") {  // a key generated: its box; refused: the label field
    focusFirst(fresh.querySelector(".new-key"), fresh.querySelector("[role=alert]") && fresh.querySelector("#key-label"));
  } else if (id.startsWith("key-")) {  // a key invalidated: the next usable one, or the heading
    const rows = [...document.querySelectorAll("#key-rows tr")];
    const usable = (tr) => tr.querySelector("button");
    focusFirst(
      rows.slice(index + 1).map(usable).find(Boolean),
      rows.slice(0, index).reverse().map(usable).find(Boolean),
      document.getElementById("api-keys-title"),
    );
  }
});

// The upload page: pick, drop anywhere, or paste; one XHR per file, for its progress events.
// (htmx 2 also reports XHR progress, but dropped and pasted files come from no form.)
// Files from data-resumable-from bytes up go over tus (tus-js-client, /api/tus/) instead:
// a dropped connection or a sleeping laptop then resumes where it stopped.
const uploadForm = document.getElementById("upload-form");
if (uploadForm) {
  const maxBytes = Number(uploadForm.dataset.maxBytes);
  const resumableFrom = Number(uploadForm.dataset.resumableFrom || Infinity);
  const partBytes = Number(uploadForm.dataset.resumablePartBytes || Infinity);
  const input = document.getElementById("upload-file");
  const keep = document.getElementById("upload-expires");  // how long: "" is the default
  // One request per file: several at once only where this script sends them one by one
  // (the plain form, without JavaScript, posts what is picked in a single request).
  input.multiple = true;
  document.querySelector("label[for=upload-file]").textContent = "Choose files";
  const list = document.getElementById("upload-list");
  const template = document.getElementById("upload-item-template");
  const headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");

  const formatBytes = (n) => {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
  };

  // A failed upload: no empty meter, and its message (role=alert) speaks for it.
  const failed = (item) => {
    item.classList.add("failed");
    item.querySelector(".upload-meter").hidden = true;
    item.querySelector(".upload-state").textContent = "";
  };
  const showError = (item, message) => {
    const error = document.createElement("p");
    error.className = "upload-error";
    error.setAttribute("role", "alert");
    error.textContent = message;
    item.querySelector(".upload-outcome").replaceChildren(error);
    failed(item);
  };
  // The file's status line (a live region) says only when it starts and when it is done.
  const say = (item, text) => {
    setTimeout(() => { item.querySelector(".upload-state").textContent = text; }, 100);
  };

  // Files go a few at a time, the rest wait their turn: the server takes at most
  // data-in-flight uploads at once from one address (over HTTP/2 a browser would send
  // every dropped file at once, and all but those would be refused).
  const most = Math.max(1, Math.min(4, Number(uploadForm.dataset.inFlight) || 4));
  let sending = 0;
  const turns = [];
  const turn = () => new Promise((go) => {
    if (sending < most) { sending += 1; go(); } else turns.push(go);
  });
  const done = () => {
    const next = turns.shift();
    if (next) next(); else sending -= 1;
  };

  const upload = async (file) => {
    const item = template.content.firstElementChild.cloneNode(true);
    item.querySelector(".upload-name").textContent = file.name;
    item.querySelector(".upload-size").textContent = formatBytes(file.size);
    item.querySelector(".upload-progress").setAttribute("aria-label", `Upload of ${file.name}`);
    list.prepend(item);
    if (file.size > maxBytes) {
      const sizes = formatBytes(file.size) === formatBytes(maxBytes)
        ? `${file.size} bytes, over the limit of ${maxBytes} bytes`
        : `${formatBytes(file.size)}, over the limit of ${formatBytes(maxBytes)}`;
      showError(item, `${file.name} is ${sizes}: not sent.`);
      return;
    }
    if (file.size === 0) {
      showError(item, `${file.name} is empty: not sent.`);
      return;
    }
    const progress = item.querySelector(".upload-progress");
    const percent = item.querySelector(".upload-percent");
    const speed = item.querySelector(".upload-speed");
    speed.textContent = "waiting its turn";
    await turn();
    say(item, `Uploading ${file.name}`);
    // Speed counts from the attempt that is sending, not from a wait before a retry.
    let started = performance.now();
    const show = (loaded, total) => {
      const share = total ? Math.round((loaded / total) * 100) : 0;
      progress.value = share;
      percent.textContent = `${share}%`;
      const seconds = (performance.now() - started) / 1000;
      if (seconds > 0) speed.textContent = `${formatBytes(Math.round(loaded / seconds))}/s`;
    };
    const restart = () => { started = performance.now(); };
    try {
      if (file.size >= resumableFrom && window.tus?.isSupported) {
        await uploadResumable(file, item, show);
      } else {
        await uploadPlain(file, item, show, restart);
      }
    } finally {
      done();
    }
    if (item.classList.contains("done")) {
      say(item, `Uploaded ${file.name}`);
      showEnds(item);
    }
  };

  // A 429 or 503 that says when to ask again (the address's uploads in flight, a server
  // restarting) is asked again, a few times; any other answer is final, and shown.
  const MAX_WAITS = 10;
  const uploadPlain = (file, item, show, restart) => new Promise((finished) => {
    const send = (waits) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/upload");
      xhr.setRequestHeader("HX-Request", "true");
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener("progress", (e) => show(e.loaded, e.lengthComputable ? e.total : 0));
      xhr.addEventListener("load", () => {
        const wait = Number(xhr.getResponseHeader("Retry-After"));
        if ([429, 503].includes(xhr.status) && wait > 0 && wait <= 60 && waits < MAX_WAITS) {
          show(0, file.size);
          item.querySelector(".upload-speed").textContent = `busy: trying again in ${wait} s`;
          setTimeout(() => send(waits + 1), wait * 1000);
          return;
        }
        if (xhr.status === 200) {
          show(file.size, file.size);
          item.classList.add("done");
          // The server's own HTML fragment (upload/result.html, block upload_result).
          item.querySelector(".upload-outcome").innerHTML = xhr.responseText;
        } else if (xhr.getResponseHeader("Content-Type")?.startsWith("text/html")) {
          item.querySelector(".upload-outcome").innerHTML = xhr.responseText;
          failed(item);
        } else {
          showError(item, `The upload failed (${xhr.status} ${xhr.statusText}).`);
        }
        finished();
      });
      xhr.addEventListener("error", () => {
        showError(item, "The upload failed: the connection was lost.");
        finished();
      });
      const data = new FormData();
      if (keep.value) data.append("expires", keep.value);
      data.append("file", file, file.name);
      restart();
      xhr.send(data);
    };
    send(0);
  });

  // Network failures and server errors are retried for about ten minutes, resuming from
  // what the server has; a refusal (4xx) is final, and shown. Picking the same file again
  // later resumes it too (tus-js-client remembers its URL in localStorage).
  const retryDelays = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000,
    60000, 60000, 60000, 60000, 60000, 60000];
  const retryable = (error) => {
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    return status === 0 || status >= 500 || [408, 409, 423, 429].includes(status);
  };
  const refusalOf = (error) => {
    const response = error.originalResponse;
    if (!response) return "The upload failed: the connection was lost.";
    try {
      return JSON.parse(response.getBody()).error || `The upload failed (${response.getStatus()}).`;
    } catch {
      return `The upload failed (${response.getStatus()}).`;
    }
  };
  const tusHeaders = { "X-XSRFToken": headers["X-XSRFToken"] ?? "" };

  const uploadResumable = (file, item, show) => new Promise((finished) => {
    const resumable = new tus.Upload(file, {
      endpoint: "/api/tus/",
      chunkSize: partBytes,
      retryDelays,
      onShouldRetry: retryable,
      headers: tusHeaders,
      metadata: {
        filename: file.name,
        filetype: file.type || "application/octet-stream",
        ...(keep.value ? { expires: keep.value } : {}),
      },
      removeFingerprintOnSuccess: true,
      onProgress: (sent, total) => show(sent, total),
      onError: (error) => {
        showError(item, refusalOf(error));
        finished();
      },
      onSuccess: async () => {
        show(file.size, file.size);
        // The same result as /upload's, from the finished upload's URL.
        try {
          const response = await fetch(resumable.url, {
            headers: { ...tusHeaders, "Tus-Resumable": "1.0.0", "HX-Request": "true" },
          });
          if (!response.ok) {
            showError(item, `The upload finished, but its result could not be shown (${response.status}).`);
            return;
          }
          item.classList.add("done");
          item.querySelector(".upload-outcome").innerHTML = await response.text();
        } catch {
          showError(item, "The upload finished, but its result could not be shown: the connection was lost.");
        } finally {
          finished();
        }
      },
    });
    resumable.findPreviousUploads().then((previous) => {
      if (previous.length) resumable.resumeFromPreviousUpload(previous[0]);
      resumable.start();
    });
  });

  const uploadAll = (files) => { for (const file of files) upload(file); };
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");

  input.addEventListener("change", () => { uploadAll([...input.files]); input.value = ""; });
  uploadForm.addEventListener("submit", (e) => { e.preventDefault(); uploadAll([...input.files]); input.value = ""; });
  document.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (e) => {
    if (e.relatedTarget === null) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    document.body.classList.remove("dragging");
    uploadAll([...e.dataTransfer.files]);
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.items ?? [])]
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile())
      .filter(Boolean);
    if (files.length) {
      e.preventDefault();
      uploadAll(files);
    }
  });
}
