/* Tidepool launch page: signup form handling. */
(function () {
  "use strict";

  var EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]{2,}$/;

  function showError(input, errorEl, message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }

  function clearError(input, errorEl) {
    errorEl.textContent = "";
    errorEl.hidden = true;
    input.removeAttribute("aria-invalid");
  }

  function showConfirmation(form) {
    var area = document.getElementById("signup-area") || form.parentNode;
    var box = document.createElement("div");
    box.className = "confirmation";
    box.setAttribute("role", "status");
    box.setAttribute("tabindex", "-1");
    box.innerHTML =
      '<span class="confirm-icon" aria-hidden="true">' +
      '<svg viewBox="0 0 24 24"><path d="M5 12.5l4.5 4.5L19 7.5"/></svg></span>' +
      "<h2>You're on the list — check your inbox</h2>" +
      '<p class="muted">We\'ve sent a confirmation link. See you on the other side of the noise.</p>';
    area.innerHTML = "";
    area.appendChild(box);
    box.focus();
  }

  // Tells the edge a signup happened (POST /api/convert). sendBeacon survives the
  // page being closed or navigated away; it sends the string as text/plain.
  function sendConversion(goal) {
    var body = JSON.stringify({ goal: goal });
    try {
      if (navigator.sendBeacon && navigator.sendBeacon("/api/convert", body)) return;
      if (window.fetch) {
        fetch("/api/convert", {
          method: "POST",
          body: body,
          keepalive: true,
          headers: { "content-type": "application/json" }
        }).catch(function () {});
      }
    } catch (e) {
      /* counting must never break the signup */
    }
  }

  // Submit handler for #signup-form. Kept as a named global so it can be extended.
  function onSignup(event) {
    event.preventDefault();
    var form = event.currentTarget || document.getElementById("signup-form");
    var input = form.querySelector('input[type="email"]');
    var errorEl = document.getElementById("signup-error");
    var email = (input.value || "").trim();

    if (!email) {
      showError(input, errorEl, "Please enter your email address.");
      return false;
    }
    if (!EMAIL_RE.test(email)) {
      showError(input, errorEl, "That doesn't look like an email — try you@company.com.");
      return false;
    }

    clearError(input, errorEl);
    sendConversion("signup");
    showConfirmation(form);
    return true;
  }

  window.onSignup = onSignup;

  function init() {
    var form = document.getElementById("signup-form");
    if (!form) return;
    form.addEventListener("submit", onSignup);
    var input = form.querySelector('input[type="email"]');
    var errorEl = document.getElementById("signup-error");
    if (input && errorEl) {
      input.addEventListener("input", function () {
        if (!errorEl.hidden) clearError(input, errorEl);
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
