// The redirect URI's page: pass the authorization response back to the app (MSAL 5).
msalRedirectBridge.broadcastResponseToMainFrame();
