// The sample single-page app: sign in with MSAL.js, exchange the Entra access token at
// entra-gateway, then call APIs through the gateway with the gateway's own token.
//
// Configuration comes from ./config.json (the demo generates it; for your tenant, write it by
// hand, see README.md):
//   { "clientId", "authority", "apiScope", "gatewayUrl",
//     optional: "knownAuthorities", "authorityMetadata", "cloudDiscoveryMetadata", "users" }
//
// The gateway token lives in this module's memory only: not in localStorage or sessionStorage,
// where any script on the origin (an XSS, a compromised dependency) could read it and where it
// would outlive the tab. A reload signs in again silently from MSAL's own cache.

const $ = (id) => document.getElementById(id);

/** The gateway session: its token, expiry and renewal timer. Never persisted. */
const session = { token: null, expiresAt: 0, timer: null };

let config;
let pca;

function show(signedIn) {
  $("signed-in").hidden = !signedIn;
  $("signed-out").hidden = signedIn;
}

function status(text) {
  $("status").textContent = text;
}

function fail(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

/** A gateway error body's description, or the status line. */
async function describe(response) {
  try {
    const body = await response.json();
    if (body.error_description) return `${response.status} ${body.error}: ${body.error_description}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

/** Calls the gateway with the gateway token. */
function gateway(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (session.token) headers.set("Authorization", `Bearer ${session.token}`);
  return fetch(new URL(path, config.gatewayUrl), { ...init, headers });
}

/** Entra access token for the gateway's API (never a Graph token: the gateway refuses those). */
async function entraToken(account) {
  const request = { scopes: [config.apiScope], account };
  try {
    return (await pca.acquireTokenSilent(request)).accessToken;
  } catch (e) {
    if (e instanceof msal.InteractionRequiredAuthError) {
      await pca.acquireTokenRedirect(request);
    }
    throw e;
  }
}

/**
 * The claims a 401 asks for, decoded (MSAL wants the JSON, not base64): from
 * `WWW-Authenticate: Bearer realm="", error="insufficient_claims", claims="<base64>"`, or null.
 */
function claimsChallenge(response) {
  const header = response.headers.get("WWW-Authenticate") || "";
  const match = header.match(/error="insufficient_claims".*claims="([^"]+)"/);
  return match ? atob(match[1]) : null;
}

/** An Entra token that satisfies `claims` (step-up, or a fresh one after a revocation). */
async function entraTokenWithClaims(account, claims) {
  const request = { scopes: [config.apiScope], account, claims };
  try {
    // With claims MSAL skips its cache and asks Entra, silently when it can.
    return (await pca.acquireTokenSilent(request)).accessToken;
  } catch (e) {
    if (e instanceof msal.InteractionRequiredAuthError) {
      await pca.acquireTokenRedirect(request);
    }
    throw e;
  }
}

/** POST /auth/exchange with an Entra token; the gateway's answer. */
function exchangeToken(token) {
  return fetch(new URL("/auth/exchange", config.gatewayUrl), {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
}

/**
 * POST /auth/exchange: the Entra token for the gateway's token and the user. A claims challenge
 * (the user's sessions were revoked) is answered once with a fresh Entra token.
 */
async function exchange(account, token = null) {
  let r = await exchangeToken(token || (await entraToken(account)));
  const claims = r.status === 401 ? claimsChallenge(r) : null;
  if (claims) r = await exchangeToken(await entraTokenWithClaims(account, claims));
  if (!r.ok) {
    const error = new Error(`Token exchange refused: ${await describe(r)}`);
    error.status = r.status;
    throw error;
  }
  const body = await r.json();
  session.token = body.access_token;
  session.expiresAt = Date.now() + body.expires_in * 1000;
  scheduleRenewal(account, body.expires_in);
  return body.user;
}

/** Renews the gateway token a minute before it expires (or halfway, for short lifetimes). */
function scheduleRenewal(account, expiresIn) {
  clearTimeout(session.timer);
  const lead = Math.min(60, expiresIn / 2);
  const inMs = Math.max(1, expiresIn - lead) * 1000;
  $("renews-at").textContent = new Date(Date.now() + inMs).toLocaleTimeString();
  session.timer = setTimeout(async () => {
    try {
      await exchange(account);
      status("Gateway token renewed.");
    } catch (e) {
      fail(`Could not renew the gateway token: ${e.message || e.errorCode}`);
    }
  }, inMs);
}

async function showUser() {
  const r = await gateway("/auth/me");
  if (!r.ok) throw new Error(`/auth/me: ${await describe(r)}`);
  const me = await r.json();
  $("display-name").textContent = me.display_name || me.user_principal_name || me.id;
  $("email").textContent = me.email || "";
  $("roles").textContent = (me.roles || []).join(", ") || "none";
  $("groups").textContent = String((me.groups || []).length);
  const photo = await gateway("/auth/me/photo");
  if (photo.ok) {
    $("photo").src = URL.createObjectURL(await photo.blob());
    $("photo").hidden = false;
  }
}

async function callApi() {
  fail("");
  await showResult(await gateway("/api/hello?from=sample-app"));
}

/**
 * A route that needs the authentication context c1 (step-up): its claims challenge is answered
 * with a token that satisfies it (MSAL with `claims`), exchanged, and the call retried once.
 */
async function callStepUp() {
  fail("");
  const path = "/payments/transfer?amount=10";
  let r = await gateway(path);
  const claims = r.status === 401 ? claimsChallenge(r) : null;
  if (claims) {
    status("Step-up: getting a token for the route's authentication context…");
    const account = pca.getActiveAccount();
    await exchange(account, await entraTokenWithClaims(account, claims));
    r = await gateway(path);
    status(r.ok ? "Step-up done." : "");
  }
  await showResult(r);
}

async function showResult(r) {
  const text = await r.text();
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
  $("api-result").textContent = r.ok ? shown : `${r.status}: ${shown}`;
  if (!r.ok) fail(`The API call was refused (${r.status}).`);
}

async function signIn() {
  fail("");
  const hint = $("login-hint").value;
  await pca.loginRedirect({ scopes: [config.apiScope], ...(hint ? { loginHint: hint } : {}) });
}

async function signOut() {
  fail("");
  const account = pca.getActiveAccount();
  if (session.token) {
    // Revoke the gateway token on every replica before forgetting it.
    const r = await gateway("/auth/logout", { method: "POST" });
    if (!r.ok && r.status !== 401) fail(`Gateway logout failed: ${await describe(r)}`);
  }
  clearTimeout(session.timer);
  session.token = null;
  await pca.logoutRedirect({ account });
}

function msalConfig() {
  const auth = {
    clientId: config.clientId,
    // CAE-capable: the gateway may answer with claims challenges (revoked sessions), and the
    // app answers them.
    clientCapabilities: ["CP1"],
    authority: config.authority,
    knownAuthorities: config.knownAuthorities || [],
    redirectUri: new URL("redirect.html", location.href).href,
    postLogoutRedirectUri: new URL("./", location.href).href,
  };
  // With the demo's mock authority, MSAL is handed the documents it would fetch.
  if (config.authorityMetadata) auth.authorityMetadata = JSON.stringify(config.authorityMetadata);
  if (config.cloudDiscoveryMetadata) auth.cloudDiscoveryMetadata = JSON.stringify(config.cloudDiscoveryMetadata);
  return { auth, cache: { cacheLocation: "sessionStorage" } };
}

async function main() {
  config = await (await fetch("config.json", { cache: "no-store" })).json();
  for (const u of config.users || []) {
    $("login-hint").append(new Option(u.label, u.login));
    $("user-choice").hidden = false;
  }
  pca = new msal.PublicClientApplication(msalConfig());
  await pca.initialize();
  const result = await pca.handleRedirectPromise();
  // The account that just signed in, else the active one: never "the first in the cache", which
  // after a reload may be another user (or one the gateway refused).
  const account = result?.account || pca.getActiveAccount();
  $("sign-in").onclick = () => signIn().catch((e) => fail(e.message || e.errorCode));
  $("call-api").onclick = () => callApi().catch((e) => fail(e.message));
  $("step-up").onclick = () => callStepUp().catch((e) => fail(e.message || e.errorCode));
  $("sign-out").onclick = () => signOut().catch((e) => fail(e.message || e.errorCode));
  if (!account) {
    show(false);
    status("");
    return;
  }
  pca.setActiveAccount(account);
  status("Signing in to the gateway…");
  try {
    await exchange(account);
    await showUser();
    show(true);
    status("Signed in.");
  } catch (e) {
    show(false);
    status("");
    if (e.status === 403) {
      // Refused by the gateway (not in an allowed group): forget this account, so that a
      // reload does not retry it and the next sign-in can pick another user.
      pca.setActiveAccount(null);
      await pca.clearCache({ account });
    }
    fail(e.message || e.errorCode);
  }
}

main().catch((e) => fail(`Start-up failed: ${e.message || e.errorCode}`));
