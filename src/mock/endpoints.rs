//! The mock's HTTP endpoints: OIDC metadata, JWKS, the token endpoint (client credentials,
//! On-Behalf-Of), Microsoft Graph and `/mock/token` for the demo's curl lines.

use super::*;

pub(super) fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

pub(super) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

pub(super) fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

impl MockState {
    pub(super) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let resp = self.route(req).await;
        super::msal::with_cors(resp, origin.as_ref())
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method().clone(), segs.as_slice()) {
            (Method::OPTIONS, _) => super::msal::preflight(&req),
            (Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => self.openid(tenant),
            (Method::GET, [tenant, "oauth2", "v2.0", "authorize"]) => {
                self.authorize(&tenant.to_ascii_lowercase(), &req)
            }
            (Method::GET, [_, "oauth2", "v2.0", "logout"]) => self.logout(&req),
            (Method::GET, [_, "discovery", "v2.0", "keys"] | [_, "discovery", "keys"]) => self.jwks(),
            (Method::POST, [_, "oauth2", "v2.0", "token"]) => self.token(req).await,
            (_, ["graph", "v1.0", rest @ ..]) => {
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                self.graph(req, &rest).await
            }
            (Method::POST, ["mock", "token"]) => self.mint_endpoint(req).await,
            (Method::POST, ["mock", "new-users"]) => self.new_users_endpoint(req).await,
            (Method::GET, ["mock", "calls"]) => reply(StatusCode::OK, json!(*lock(&self.calls))),
            (Method::POST, ["mock", "users", login, action]) => self.user_switch(login, action),
            _ => graph_error(StatusCode::NOT_FOUND, "NotFound", "no such mock endpoint"),
        }
    }

    /// `POST /mock/users/{login}/{disable|enable|revoke-sessions}`: what an admin does in the
    /// Entra admin center, for the demo's curl lines.
    fn user_switch(&self, login: &str, action: &str) -> Response<Body> {
        let Some(oid) = lock(&self.users).values().find(|u| u.login == login).map(|u| u.oid.clone()) else {
            return graph_error(StatusCode::NOT_FOUND, "NotFound", "no such mock user");
        };
        match action {
            "disable" => self.disable_user(&oid),
            "enable" => self.enable_user(&oid),
            "revoke-sessions" => {
                self.revoke_sessions(&oid);
            }
            _ => return graph_error(StatusCode::NOT_FOUND, "NotFound", "disable, enable or revoke-sessions"),
        }
        reply(StatusCode::OK, json!({"user": login, "oid": oid, "done": action}))
    }

    pub(super) fn openid(&self, tenant: &str) -> Response<Body> {
        self.count("openid");
        reply(StatusCode::OK, self.openid_document(tenant))
    }

    pub(super) fn jwks(&self) -> Response<Body> {
        self.count("jwks");
        if let Some(s) = lock(&self.faults).jwks_status {
            return reply(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                json!({"error": "mock failure"}),
            );
        }
        let keys = lock(&self.keys);
        let base = self.base();
        // One document for every tenant path, as an independent implementation may serve it:
        // the gateway must check each key's `issuer` against the token's.
        let list: Vec<Value> = keys
            .published()
            .map(|k| {
                let issuer = format!("{base}/{}/v2.0", k.tenant.as_deref().unwrap_or("{tenantid}"));
                json!({"kty": "RSA", "use": "sig", "kid": k.kid, "x5t": k.kid, "n": k.n, "e": k.e, "issuer": issuer})
            })
            .collect();
        reply(StatusCode::OK, json!({"keys": list}))
    }

    pub(super) async fn token(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})),
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        let endpoint = if grant == "client_credentials" { "token_app" } else { "token_obo" };
        let tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default().to_ascii_lowercase();
        if matches!(grant, "authorization_code" | "refresh_token") {
            return self.user_token(&tenant, &form);
        }
        self.count(endpoint);
        self.count(&format!("{endpoint}:{tenant}"));
        if !self.settings.knows_tenant(&tenant) {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found.", "error_codes": [90002]}),
            );
        }
        let token_url = format!("{}{path}", self.base());
        if !self.client_authenticated(&form, &token_url) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]}),
            );
        }
        if !form.get("scope").is_some_and(|sc| sc.ends_with("/.default")) {
            return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_scope", "error_codes": [70011]}));
        }
        let principal = match grant {
            "client_credentials" => Principal::App { tenant },
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                if form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of") {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
                }
                // The assertion must come from the tenant whose endpoint is asked (Entra refuses
                // an OBO for a user of another tenant at this one).
                match self.check_assertion(form.get("assertion").map(String::as_str).unwrap_or("")) {
                    Some((oid, tid)) if tid == tenant => Principal::User { oid, tenant },
                    _ => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "invalid_grant", "error_codes": [50013]}),
                        );
                    }
                }
            }
            _ => {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"}));
            }
        };
        let token = format!("mock-graph-{}", uuid::Uuid::new_v4());
        lock(&self.graph_tokens).insert(token.clone(), principal);
        reply(
            StatusCode::OK,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
        )
    }

    /// The client proves itself with its secret, a federated token, or a certificate assertion.
    pub(super) fn client_authenticated(&self, form: &HashMap<String, String>, token_url: &str) -> bool {
        let s = &self.settings;
        if form.get("client_id") != Some(&s.client_id) {
            return false;
        }
        let field = |k: &str| form.get(k).map(String::as_str);
        match (field("client_secret"), field("client_assertion_type"), field("client_assertion")) {
            (Some(secret), None, None) => secret == s.client_secret,
            (None, Some(JWT_BEARER_ASSERTION), Some(assertion)) => self.check_client_assertion(assertion, token_url),
            _ => false,
        }
    }

    pub(super) fn check_client_assertion(&self, assertion: &str, token_url: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(assertion) else { return false };
        let mut v = Validation::new(Algorithm::RS256);
        if let Some(x5t) = header.x5t_s256 {
            // Certificate credential: signed by the registered certificate's key, for this endpoint.
            let Some(key) = lock(&self.certificates).get(&x5t).cloned() else { return false };
            v.set_audience(&[token_url]);
            v.set_issuer(&[&self.settings.client_id]);
            v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            return jsonwebtoken::decode::<Value>(assertion, &key, &v)
                .is_ok_and(|d| d.claims.get("sub").and_then(Value::as_str) == Some(self.settings.client_id.as_str()));
        }
        // Federated credential: a token of the (mock) Kubernetes issuer for the exchange audience.
        let Some(kid) = header.kid else { return false };
        let keys = lock(&self.keys);
        let Some(key) = keys.published().find(|k| k.kid == kid) else { return false };
        v.set_audience(&[FEDERATION_AUDIENCE]);
        v.set_issuer(&[format!("{}/federation", self.base())]);
        jsonwebtoken::decode::<Value>(assertion, &key.decoding, &v).is_ok()
    }

    /// An OBO assertion must be a valid token of this mock addressed to the app: its (oid, tid).
    pub(super) fn check_assertion(&self, assertion: &str) -> Option<(String, String)> {
        let kid = jsonwebtoken::decode_header(assertion).ok()?.kid?;
        let keys = lock(&self.keys);
        let key = keys.published().find(|k| k.kid == kid)?;
        let mut v = Validation::new(Algorithm::RS256);
        let id = &self.settings.client_id;
        v.set_audience(&[format!("api://{id}"), id.clone()]);
        let data = jsonwebtoken::decode::<Value>(assertion, &key.decoding, &v).ok()?;
        let claim = |name: &str| data.claims.get(name).and_then(|o| o.as_str()).map(str::to_ascii_lowercase);
        Some((claim("oid")?, claim("tid")?))
    }

    pub(super) async fn mint_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 1 << 16).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"error": "body too large"})),
        };
        let spec: TokenSpec = if body.iter().all(u8::is_ascii_whitespace) {
            TokenSpec::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": format!("bad token spec: {e}")}));
                }
            }
        };
        reply(StatusCode::OK, json!({"access_token": self.mint(&spec)}))
    }

    /// `{"count": N, "groups": [...]}`: N new users in those groups, and a token for each (one
    /// per line): what a benchmark of first sign-ins needs.
    pub(super) async fn new_users_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        #[derive(Deserialize)]
        struct Ask {
            count: usize,
            #[serde(default)]
            groups: Vec<String>,
        }
        let body = match Limited::new(req.into_body(), 1 << 16).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"error": "body too large"})),
        };
        let Ok(ask) = serde_json::from_slice::<Ask>(&body) else {
            return reply(StatusCode::BAD_REQUEST, json!({"error": "send {\"count\": N, \"groups\": [...]}"}));
        };
        // RSA signing dominates: one batch per core (this blocks the mock's thread meanwhile,
        // which only a benchmark's set-up asks for).
        let count = ask.count.min(200_000);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let batches: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..cores)
                .map(|c| {
                    let n = count / cores + usize::from(c < count % cores);
                    let groups = &ask.groups;
                    scope.spawn(move || {
                        let mut tokens = String::new();
                        for _ in 0..n {
                            let oid = uuid::Uuid::new_v4().to_string();
                            let login = format!("user-{oid}");
                            self.add_user(MockUser {
                                login: login.clone(),
                                oid: oid.clone(),
                                display_name: Some(format!("User {}", &oid[..8])),
                                mail: Some(format!("{login}@contoso.example")),
                                groups: groups.clone(),
                                ..Default::default()
                            });
                            tokens.push_str(&self.mint(&TokenSpec { user: Some(login), ..Default::default() }));
                            tokens.push('\n');
                        }
                        tokens
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let tokens = batches.concat();
        Response::new(full(tokens))
    }

    pub(super) async fn graph(&self, req: Request<Incoming>, rest: &[String]) -> Response<Body> {
        let delta = match rest.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["users", "delta"] => Some("users_delta"),
            ["groups", "delta"] => Some("groups_delta"),
            _ => None,
        };
        let endpoint = match rest.last().map(String::as_str) {
            _ if delta.is_some() => delta.unwrap_or_default(),
            Some("checkMemberGroups") => "checkMemberGroups",
            Some("transitiveMemberOf") => "transitiveMemberOf",
            Some("$value") => "photo",
            _ => "profile",
        };
        self.count(endpoint);
        if let Some(r) = self.graph_fault(endpoint, &req).await {
            return r;
        }
        let principal = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| lock(&self.graph_tokens).get(t).cloned());
        let Some(principal) = principal else {
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty or invalid.",
            );
        };
        if let Some(which) = delta {
            let q = query(&req);
            return match which {
                "users_delta" => self.users_delta(principal.tenant(), &q),
                _ => self.groups_delta(principal.tenant(), &q),
            };
        }
        let (oid, prefix, tail) = match (rest.first().map(String::as_str), &principal) {
            (Some("me"), Principal::User { oid, .. }) => (oid.clone(), "me".to_string(), &rest[1..]),
            (Some("me"), Principal::App { .. }) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                );
            }
            (Some("users"), _) if rest.len() >= 2 => {
                (rest[1].to_ascii_lowercase(), format!("users/{}", rest[1]), &rest[2..])
            }
            _ => return graph_error(StatusCode::NOT_FOUND, "NotFound", "unsupported Graph path"),
        };
        let home = self.settings.tenant_id.to_ascii_lowercase();
        let user = lock(&self.users).get(&oid).cloned().filter(|u| {
            // A token of one tenant sees only that tenant's directory.
            u.tenant.as_deref().unwrap_or(&home).eq_ignore_ascii_case(principal.tenant())
        });
        let Some(user) = user else {
            return graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", "Resource does not exist.");
        };
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        match (req.method().clone(), tail.as_slice()) {
            (Method::GET, []) => self.profile(&user),
            (Method::POST, ["checkMemberGroups"]) => self.check_member_groups(&user, req).await,
            (Method::GET, ["transitiveMemberOf"]) => self.transitive_member_of(&user, &prefix, &query(&req)),
            (Method::GET, ["photo", "$value"]) => match &user.photo {
                Some((ct, bytes)) => {
                    let mut r = Response::new(full(bytes.clone()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_str(ct).unwrap_or(header::HeaderValue::from_static("image/jpeg")),
                    );
                    r
                }
                None => graph_error(StatusCode::NOT_FOUND, "ImageNotFound", "The photo wasn't found."),
            },
            _ => graph_error(StatusCode::NOT_FOUND, "NotFound", "unsupported Graph path"),
        }
    }

    pub(super) async fn graph_fault(&self, endpoint: &str, req: &Request<Incoming>) -> Option<Response<Body>> {
        let delay = lock(&self.faults).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut f = lock(&self.faults);
        if f.throttle_remaining > 0 {
            f.throttle_remaining -= 1;
            let mut r = graph_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests.");
            let value = header::HeaderValue::from_str(&f.retry_after).unwrap_or(header::HeaderValue::from_static("1"));
            r.headers_mut().insert(header::RETRY_AFTER, value);
            return Some(r);
        }
        if let Some(s) = f.graph_status {
            return Some(graph_error(
                StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "ServiceUnavailable",
                "mock failure",
            ));
        }
        if endpoint == "transitiveMemberOf" && f.fail_page.is_some() {
            let page = query_page(req);
            if Some(page) == f.fail_page {
                return Some(graph_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "mock page failure",
                ));
            }
        }
        None
    }

    pub(super) fn profile(&self, u: &MockUser) -> Response<Body> {
        reply(
            StatusCode::OK,
            json!({"id": u.oid, "mail": u.mail, "displayName": u.display_name, "userPrincipalName": u.user_principal_name, "givenName": u.given_name, "surname": u.surname, "jobTitle": u.job_title, "department": u.department}),
        )
    }

    /// Direct groups plus every group they are nested in.
    pub(super) fn transitive_groups(&self, u: &MockUser) -> BTreeSet<String> {
        let nesting = lock(&self.nesting);
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = u.groups.iter().map(|g| g.to_ascii_lowercase()).collect();
        while let Some(g) = todo.pop() {
            if seen.insert(g.clone()) {
                todo.extend(nesting.get(&g).cloned().unwrap_or_default());
            }
        }
        seen
    }

    pub(super) async fn check_member_groups(&self, u: &MockUser, req: Request<Incoming>) -> Response<Body> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ask {
            group_ids: Vec<String>,
        }
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
        };
        let Ok(ask) = serde_json::from_slice::<Ask>(&body) else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "groupIds missing");
        };
        if ask.group_ids.len() > 20 {
            return graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "at most 20 groupIds");
        }
        let member = self.transitive_groups(u);
        let found: Vec<&String> = ask.group_ids.iter().filter(|g| member.contains(&g.to_ascii_lowercase())).collect();
        reply(StatusCode::OK, json!({"value": found}))
    }

    pub(super) fn transitive_member_of(
        &self,
        u: &MockUser,
        prefix: &str,
        q: &HashMap<String, String>,
    ) -> Response<Body> {
        let all: Vec<String> = self.transitive_groups(u).into_iter().collect();
        let size = *lock(&self.page_size);
        let top: usize = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(100).min(size);
        let skip: usize = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(top)
            .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g}))
            .collect();
        let mut body = json!({"value": page});
        if skip + top < all.len() {
            let next = format!(
                "{}/graph/v1.0/{prefix}/transitiveMemberOf?$select=id&$top={top}&$skiptoken={}",
                self.base(),
                skip + top
            );
            body["@odata.nextLink"] = json!(next);
        }
        reply(StatusCode::OK, body)
    }
}

pub(super) fn query_page(req: &Request<Incoming>) -> usize {
    let q = query(req);
    let skip: usize = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let top: usize = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(1).max(1);
    skip / top
}
