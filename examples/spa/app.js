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

/** POST /auth/exchange: the Entra token for the gateway's token and the user. */
async function exchange(account) {
  const token = await entraToken(account);
  const r = await fetch(new URL("/auth/exchange", config.gatewayUrl), {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!r.ok) throw new Error(`Token exchange refused: ${await describe(r)}`);
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
  const r = await gateway("/api/hello?from=sample-app");
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
  const account = result?.account || pca.getAllAccounts()[0];
  $("sign-in").onclick = () => signIn().catch((e) => fail(e.message || e.errorCode));
  $("call-api").onclick = () => callApi().catch((e) => fail(e.message));
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
    fail(e.message || e.errorCode);
  }
}

main().catch((e) => fail(`Start-up failed: ${e.message || e.errorCode}`));
