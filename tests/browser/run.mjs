// End-to-end test of the frontend flow in headless Chromium: `entra-gateway demo` serves the
// sample app (examples/spa) on its own origin, MSAL.js signs Alice in at the mock Entra ID,
// the app exchanges the token at the gateway, shows her name and photo, calls the API through
// the gateway; a page on another origin is blocked by CORS; sign-out revokes the token.
//
//   node run.mjs [path/to/entra-gateway]     (default: ../../target/debug/entra-gateway)
// Screenshots of each step go to target/browser/ (CHROMIUM: the browser, default
// /usr/bin/chromium).

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const binary = process.argv[2] || join(root, "target/debug/entra-gateway");
const shots = join(process.env.CARGO_TARGET_DIR || join(root, "target"), "browser");
const STEP_TIMEOUT = 15_000;

let failures = 0;
function check(ok, what, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${ok || !detail ? "" : `: ${detail}`}`);
  if (!ok) failures += 1;
}

/** Starts the demo on free ports; resolves with its URLs once it prints them. */
function startDemo() {
  const demo = spawn(binary, ["demo", "--port", "0", "--admin-port", "0", "--app-port", "0"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  return new Promise((resolveUrls, reject) => {
    const timer = setTimeout(() => reject(new Error(`the demo printed no URLs:\n${out}`)), 60_000);
    demo.on("exit", (code) => reject(new Error(`the demo exited (${code}):\n${out}`)));
    demo.stdout.on("data", (chunk) => {
      out += chunk;
      const app = out.match(/Open (http:\/\/127\.0\.0\.1:\d+\/) in a browser/);
      const gateway = out.match(/gateway\s+(http:\/\/127\.0\.0\.1:\d+)/);
      if (app && gateway) {
        clearTimeout(timer);
        resolveUrls({ demo, app: app[1], gateway: gateway[1] });
      }
    });
    demo.stderr.on("data", (chunk) => { out += chunk; });
  });
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const { demo, app, gateway } = await startDemo();
  const profile = mkdtempSync(join(tmpdir(), "entra-gateway-chromium-"));
  // A fresh profile directory (Playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1000, height: 760 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT);
    const consoleErrors = [];
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    // The test watches the network like a developer tool would, to keep the gateway token for
    // the checks after sign-out (the app itself never exposes it).
    let internalToken = null;
    page.on("response", async (r) => {
      if (r.url() === `${gateway}/auth/exchange` && r.status() === 200) {
        internalToken = (await r.json()).access_token;
      }
    });

    // 1. Signed out: the page offers "Sign in".
    await page.goto(app);
    const signIn = page.getByRole("button", { name: "Sign in" });
    await signIn.waitFor();
    check(await signIn.isVisible(), "the app shows a Sign in button");
    await shot(page, "1-signed-out");

    // 2. Sign in: MSAL redirects to the mock's /authorize, back through the redirect bridge,
    //    redeems the code with PKCE, and the app exchanges the token at the gateway.
    await signIn.click();
    await page.locator("#display-name").filter({ hasText: "Alice" }).waitFor();
    check((await page.locator("#display-name").textContent()) === "Alice Jørgensen", "the user's display name is shown");
    check((await page.locator("#email").textContent()) === "alice@contoso.example", "and her email");
    await page.locator("#photo").waitFor();
    const photoWidth = await page.locator("#photo").evaluate((img) => img.naturalWidth);
    check(photoWidth === 96, "her photo from /auth/me/photo is shown", `naturalWidth ${photoWidth}`);
    check(typeof internalToken === "string" && internalToken.split(".").length === 3, "the exchange returned a gateway token");
    check(new URL(page.url()).origin === new URL(app).origin, "back on the app's own origin after sign-in", page.url());
    await shot(page, "2-signed-in");

    // 3. Call the API through the gateway: the upstream sees the identity headers.
    await page.getByRole("button", { name: "Call the API" }).click();
    await page.locator("#api-result").filter({ hasText: "x-auth-user-id" }).waitFor();
    const seen = JSON.parse(await page.locator("#api-result").textContent());
    const h = seen.headers;
    check(seen.path === "/api/hello" && seen.query === "from=sample-app", "the upstream got the proxied path", JSON.stringify(seen));
    check(h["x-auth-principal-type"] === "user", "X-Auth-Principal-Type: user", h["x-auth-principal-type"]);
    check(h["x-auth-email"] === "alice@contoso.example", "X-Auth-Email", h["x-auth-email"]);
    check(h["x-auth-roles"] === "admin,reader" || h["x-auth-roles"] === "reader,admin", "X-Auth-Roles", h["x-auth-roles"]);
    check(/^[0-9a-f-]{36}$/.test(h["x-auth-user-id"] || ""), "X-Auth-User-Id is the internal id", h["x-auth-user-id"]);
    check(h.origin === new URL(app).origin, "the upstream sees the page's Origin", h.origin);
    check(!("authorization" in h), "no token reaches the upstream");
    await shot(page, "3-api-called");

    // 3b. Step-up: /payments/ needs the authentication context c1. The first call gets a claims
    //     challenge; the app asks MSAL for a token with those claims (the mock's authority
    //     honours them: the token carries acrs), exchanges it and retries.
    const stepUpStatuses = [];
    const onStepUp = (r) => { if (r.url().startsWith(`${gateway}/payments/`)) stepUpStatuses.push(r.status()); };
    page.on("response", onStepUp);
    await page.getByRole("button", { name: "Call the step-up API" }).click();
    await page.locator("#api-result").filter({ hasText: "/payments/transfer" }).waitFor();
    page.off("response", onStepUp);
    const paid = JSON.parse(await page.locator("#api-result").textContent());
    check(paid.path === "/payments/transfer", "the step-up route answered after the challenge", JSON.stringify(paid));
    check(JSON.stringify(stepUpStatuses) === "[401,200]", "401 with a claims challenge, then 200", JSON.stringify(stepUpStatuses));
    const stepped = JSON.parse(Buffer.from(internalToken.split(".")[1], "base64url").toString());
    check(JSON.stringify(stepped.acrs) === '["c1"]', "the re-exchanged gateway token carries acrs c1", JSON.stringify(stepped.acrs));
    check((await page.locator("#status").textContent()) === "Step-up done.", "the page says so");
    await shot(page, "3b-step-up");

    // 4. A page on another origin (localhost instead of 127.0.0.1) is blocked by CORS.
    const other = await context.newPage();
    await other.goto(app.replace("127.0.0.1", "localhost"));
    const blocked = await other.evaluate(async ([url, token]) => {
      try {
        await fetch(`${url}/auth/me`, { headers: { Authorization: `Bearer ${token}` } });
        return "fetched";
      } catch (e) {
        return `blocked: ${e.name}`;
      }
    }, [gateway, internalToken]);
    check(blocked === "blocked: TypeError", "a page on a disallowed origin is blocked by CORS", blocked);
    const allowed = await page.evaluate(async ([url, token]) => {
      const r = await fetch(`${url}/auth/me`, { headers: { Authorization: `Bearer ${token}` } });
      return r.status;
    }, [gateway, internalToken]);
    check(allowed === 200, "the same call from the app's origin works", String(allowed));
    await shot(other, "4-other-origin");
    await other.close();

    // 5. Sign out: the gateway token is revoked, then MSAL signs out at the mock.
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    check(await page.locator("#signed-in").isHidden(), "the app is signed out");
    await shot(page, "5-signed-out-again");
    const after = await fetch(`${gateway}/api/hello`, { headers: { Authorization: `Bearer ${internalToken}` } });
    check(after.status === 401, "the next API call with the old gateway token is refused", String(after.status));
    const fromPage = await page.evaluate(async ([url, token]) => {
      const r = await fetch(`${url}/api/hello`, { headers: { Authorization: `Bearer ${token}` } });
      return [r.status, (await r.json()).error];
    }, [gateway, internalToken]);
    check(fromPage[0] === 401 && fromPage[1] === "invalid_token", "and the page can read why", JSON.stringify(fromPage));
    // 6. A refused user (carol is in no allowed group): the refusal is shown, no stale status,
    //    and the account is forgotten; then another user signs in, and a reload keeps them.
    await page.locator("#login-hint").selectOption("carol");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#error").filter({ hasText: "403" }).waitFor();
    check(await page.locator("#signed-in").isHidden(), "carol is refused and not shown as signed in");
    check((await page.locator("#status").textContent()) === "", "no stale 'Signing in…' under the refusal",
      await page.locator("#status").textContent());
    await shot(page, "6-refused-user");
    await page.locator("#login-hint").selectOption("bob");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#display-name").filter({ hasText: "Bob" }).waitFor();
    check((await page.locator("#display-name").textContent()) === "Bob Builder", "then bob signs in");
    await page.reload();
    await page.locator("#display-name").filter({ hasText: "Bob" }).waitFor();
    check((await page.locator("#display-name").textContent()) === "Bob Builder", "a reload keeps bob (the active account), not carol or alice");
    check(await page.locator("#error").isHidden(), "and shows no error after the reload");
    await shot(page, "7-reloaded");
    check(consoleErrors.every((e) => /Failed to load resource|CORS|Access-Control/.test(e)), "no unexpected console errors", consoleErrors.join(" | "));
  } finally {
    await context.close();
    demo.kill("SIGTERM");
    rmSync(profile, { recursive: true, force: true });
  }
  console.log(`screenshots in ${shots}`);
  if (failures) {
    console.log(`${failures} check(s) failed`);
    process.exit(1);
  }
  console.log("browser test passed");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
