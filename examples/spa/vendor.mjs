// Copies the pinned @azure/msal-browser build into vendor/ (committed, so that
// `entra-gateway demo` serves the sample app without npm). Run `npm ci && npm run vendor`
// after changing the version in package.json.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";

const pkg = "node_modules/@azure/msal-browser";
const { version } = JSON.parse(readFileSync(`${pkg}/package.json`, "utf8"));
mkdirSync("vendor", { recursive: true });
copyFileSync(`${pkg}/lib/msal-browser.min.js`, "vendor/msal-browser.min.js");
copyFileSync(`${pkg}/lib/redirect-bridge/msal-redirect-bridge.min.js`, "vendor/msal-redirect-bridge.min.js");
copyFileSync(`${pkg}/LICENSE`, "vendor/LICENSE-msal-browser");
console.log(`vendored @azure/msal-browser ${version}`);
