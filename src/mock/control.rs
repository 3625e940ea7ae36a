//! The mock's controls, used by tests and the demo: its directory, keys, fault switches and
//! call counters, and minting tokens as Entra would.

use super::*;

impl MockState {
    pub(super) fn new(settings: MockSettings, base: String) -> MockState {
        MockState {
            settings,
            base: Mutex::new(base),
            keys: Mutex::new(KeyState { keys: load_keys(), signing: 0, published: 1 }),
            users: Mutex::default(),
            nesting: Mutex::default(),
            faults: Mutex::default(),
            page_size: Mutex::new(100),
            calls: Mutex::default(),
            call_times: Mutex::default(),
            graph_tokens: Mutex::default(),
            auth_codes: Mutex::default(),
            refresh_tokens: Mutex::default(),
            certificates: Mutex::default(),
            delta: Mutex::default(),
        }
    }

    pub(super) fn base(&self) -> String {
        lock(&self.base).clone()
    }

    pub fn add_user(&self, user: MockUser) {
        let oid = user.oid.to_ascii_lowercase();
        let groups = user.groups.clone();
        lock(&self.users).insert(oid.clone(), user);
        for g in groups {
            self.log_member_change(&g, &oid, false, false);
        }
        self.log_user_change(&oid);
    }

    /// Changes a user's display name (a later sign-in should update the record).
    pub fn set_display_name(&self, oid: &str, name: &str) {
        if let Some(u) = lock(&self.users).get_mut(&oid.to_ascii_lowercase()) {
            u.display_name = Some(name.to_string());
        }
    }

    /// Makes `child` a member of `parent` (nested groups).
    pub fn nest_group(&self, child: &str, parent: &str) {
        lock(&self.nesting).entry(child.to_ascii_lowercase()).or_default().push(parent.to_ascii_lowercase());
        self.log_member_change(parent, child, true, false);
    }

    /// Publishes the next key and signs with it from now on; returns its kid.
    pub fn rotate_signing_key(&self) -> String {
        let mut k = lock(&self.keys);
        k.signing = (k.signing + 1).min(KEY_PEMS.len() - 1);
        k.published = k.published.max(k.signing + 1);
        k.keys[k.signing].kid.clone()
    }

    /// Publishes a new RSA key that belongs to tenant `tid` alone (JWKS `issuer` naming that
    /// tenant, as Entra publishes tenant-specific keys) in every tenant's JWKS; returns its kid.
    /// Sign with it through [`TokenSpec::signing_kid`].
    pub fn publish_tenant_key(&self, tid: &str) -> String {
        let pem = crate::keys::generate_pem(crate::config::SigningAlgorithm::RS256).expect("RSA key");
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("generated key is valid");
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("RSA key");
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else { unreachable!("RSA key") };
        let decoding = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).expect("valid components");
        let mut k = lock(&self.keys);
        let kid = format!("mock-tenant-key-{}", k.keys.len() + 1);
        k.keys.push(MockKey {
            tenant: Some(tid.to_string()),
            kid: kid.clone(),
            encoding,
            decoding,
            n: rsa.n.clone(),
            e: rsa.e.clone(),
        });
        kid
    }

    /// The kid new tokens are signed with.
    pub fn signing_kid(&self) -> String {
        let k = lock(&self.keys);
        k.keys[k.signing].kid.clone()
    }

    /// Every Graph call answers this status (None: normal).
    pub fn set_graph_status(&self, status: Option<u16>) {
        lock(&self.faults).graph_status = status;
    }

    /// The next `count` Graph calls answer 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_graph(&self, count: u32, retry_after_secs: u64) {
        self.throttle_graph_with(count, &retry_after_secs.to_string());
    }

    /// The next `count` Graph calls answer 429 with this `Retry-After` value (seconds, a
    /// fraction, or an HTTP-date).
    pub fn throttle_graph_with(&self, count: u32, retry_after: &str) {
        let mut f = lock(&self.faults);
        f.throttle_remaining = count;
        f.retry_after = retry_after.to_string();
    }

    /// Every Graph call waits this long first.
    pub fn set_graph_delay(&self, delay: Duration) {
        lock(&self.faults).delay = delay;
    }

    /// `transitiveMemberOf` page `index` (0-based) answers 500.
    pub fn fail_page(&self, index: Option<usize>) {
        lock(&self.faults).fail_page = index;
    }

    /// The JWKS endpoint answers this status (None: normal).
    pub fn set_jwks_status(&self, status: Option<u16>) {
        lock(&self.faults).jwks_status = status;
    }

    /// Items per `transitiveMemberOf` page.
    pub fn set_page_size(&self, size: usize) {
        *lock(&self.page_size) = size.max(1);
    }

    /// Calls received on `endpoint` (`jwks`, `openid`, `token_app`, `token_obo`, `profile`,
    /// `checkMemberGroups`, `transitiveMemberOf`, `photo`, `users_delta`, `groups_delta`).
    pub fn calls(&self, endpoint: &str) -> u64 {
        lock(&self.calls).get(endpoint).copied().unwrap_or(0)
    }

    /// Calls to Graph group endpoints (either lookup).
    pub fn group_calls(&self) -> u64 {
        self.calls("checkMemberGroups") + self.calls("transitiveMemberOf")
    }

    pub(super) fn count(&self, endpoint: &str) {
        *lock(&self.calls).entry(endpoint.to_string()).or_default() += 1;
        lock(&self.call_times).entry(endpoint.to_string()).or_default().push(std::time::Instant::now());
    }

    /// When each call to `endpoint` arrived.
    pub fn call_times(&self, endpoint: &str) -> Vec<std::time::Instant> {
        lock(&self.call_times).get(endpoint).cloned().unwrap_or_default()
    }

    /// A Kubernetes service-account token as the AKS OIDC issuer would mint it for workload
    /// identity (audience `api://AzureADTokenExchange`), signed by the mock's current key.
    pub fn mint_federated_token(&self, subject: &str) -> String {
        let now = unix_now();
        let claims = json!({
            "iss": format!("{}/federation", self.base()), "aud": [FEDERATION_AUDIENCE], "sub": subject,
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        let keys = lock(&self.keys);
        let key = &keys.keys[keys.signing];
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("mock signing works")
    }

    /// Registers a certificate on the app: its `x5t#S256` thumbprint and public key.
    pub fn register_certificate(&self, x5t_s256: &str, public_key: DecodingKey) {
        lock(&self.certificates).insert(x5t_s256.to_string(), public_key);
    }

    /// Mints an access token as Entra would.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        let s = &self.settings;
        let user = spec.user.as_ref().and_then(|login| lock(&self.users).values().find(|u| &u.login == login).cloned());
        let oid = spec
            .oid
            .clone()
            .or_else(|| user.as_ref().map(|u| u.oid.clone()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let tid = spec
            .tid
            .clone()
            .or_else(|| user.as_ref().and_then(|u| u.tenant.clone()))
            .unwrap_or_else(|| s.tenant_id.clone());
        let version = spec.version.unwrap_or(2);
        let now = unix_now() as i64;
        let mut c = serde_json::Map::new();
        let iss = spec.iss.clone().unwrap_or_else(|| match version {
            1 => format!("https://sts.windows.net/{tid}/"),
            _ => format!("{}/{tid}/v2.0", self.base()),
        });
        c.insert("aud".into(), json!(spec.aud.clone().unwrap_or_else(|| format!("api://{}", s.client_id))));
        c.insert("iss".into(), json!(iss));
        c.insert("iat".into(), json!(now));
        c.insert("nbf".into(), json!(now + spec.not_before_in.unwrap_or(0)));
        c.insert("exp".into(), json!(now + spec.expires_in.unwrap_or(3600)));
        c.insert("tid".into(), json!(tid));
        c.insert("oid".into(), json!(oid));
        c.insert("sub".into(), json!(format!("sub-{oid}")));
        c.insert("ver".into(), json!(if version == 1 { "1.0" } else { "2.0" }));
        c.insert("scp".into(), json!("access_as_user"));
        let name = spec.name.clone().or_else(|| user.as_ref().and_then(|u| u.display_name.clone()));
        let username = spec.username.clone().or_else(|| user.as_ref().and_then(|u| u.user_principal_name.clone()));
        if let Some(n) = name {
            c.insert("name".into(), json!(n));
        }
        if let Some(u) = username {
            if version == 1 {
                c.insert("upn".into(), json!(u));
                c.insert("unique_name".into(), json!(u));
            } else {
                c.insert("preferred_username".into(), json!(u));
            }
        }
        if let Some(e) = spec.email.clone().or_else(|| user.as_ref().and_then(|u| u.mail.clone())) {
            c.insert("email".into(), json!(e));
        }
        let user_groups = match (&user, spec.overage || spec.hasgroups) {
            (Some(u), false) => Some(self.transitive_groups(u).into_iter().collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(g) = spec.groups.clone().or(user_groups) {
            c.insert("groups".into(), json!(g));
        }
        if spec.overage {
            c.insert("_claim_names".into(), json!({"groups": "src1"}));
            c.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": format!("https://graph.windows.net/{tid}/users/{oid}/getMemberObjects")}}),
            );
        }
        if spec.hasgroups {
            c.insert("hasgroups".into(), json!(true));
        }
        for (k, v) in spec.extra.clone().unwrap_or_default() {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
        self.sign_with(Value::Object(c), spec.signing_kid.as_deref(), spec.kid.as_deref())
    }

    /// `claims` signed RS256 with the current key.
    pub(super) fn sign_claims(&self, claims: Value) -> String {
        self.sign_with(claims, None, None)
    }

    fn sign_with(&self, claims: Value, signing_kid: Option<&str>, header_kid: Option<&str>) -> String {
        let keys = lock(&self.keys);
        let key = match signing_kid {
            Some(kid) => keys.keys.iter().find(|k| k.kid == kid).expect("a published kid"),
            None => &keys.keys[keys.signing],
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(header_kid.map(str::to_string).unwrap_or_else(|| key.kid.clone()));
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("mock signing works")
    }
}
