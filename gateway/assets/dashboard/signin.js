// The sign-in page: posts the token as JSON (which no form on another site
// can send) and moves on to the dashboard once the session cookie is set.
const form = document.getElementById("signin");
const error = document.getElementById("error");
if (new URLSearchParams(location.search).has("once")) {
  error.textContent = "That sign-in link was already used or has expired. Sign in with the token.";
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const token = document.getElementById("token").value;
  try {
    const response = await fetch("/dashboard/api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      credentials: "same-origin",
    });
    if (response.ok) {
      location.assign("/dashboard/");
      return;
    }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.message || `Sign-in failed (${response.status}).`;
  } catch (e) {
    error.textContent = `The gateway did not answer: ${e.message}`;
  }
});
