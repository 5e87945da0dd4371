// Classic (non-module) script, loaded first: a module that fails to load or
// link (a missing runtime file, a failed integrity check) never runs its own
// error handling, so the failure is reported here, on the page and in #result.
window.addEventListener("error", (event) => {
  const result = document.getElementById("result");
  if (!result || result.dataset.status) return;
  const src = event.target && event.target.src;  // a <script> that failed to load
  const what = event.message || (src ? `could not load ${src} or a module it imports` : "error");
  result.textContent = JSON.stringify({ status: "error", error: what });
  result.dataset.status = "error";
  const box = document.getElementById("error");
  box.textContent = what;
  box.hidden = false;
}, true);
