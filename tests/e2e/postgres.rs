//! The user directory in a real PostgreSQL (a throwaway cluster per test): rows and events as
//! an application team reads them, replicas and `migrate` commands migrating at once, the
//! database restarted under load (known users go on from the cache, first sign-ins fail
//! closed, queued writes catch up), a row the gateway did not write, TLS verified against a
//! CA, and continuous access recorded as history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::postgres::PostgresServer;
use crate::support::redis::RedisServer;
use crate::support::*;
use entra_gateway::config::SigningAlgorithm;
use entra_gateway::mock::MockEntra;

fn builder<'a>(mock: &'a MockEntra, postgres_url: &str) -> GatewayBuilder<'a> {
    GatewayBuilder::new(mock)
        .key("k1", SigningAlgorithm::ES256, Some(deployment_key()))
        .set("DIRECTORY__POSTGRES_URL", postgres_url)
        // Graph's profile at every sign-in, so that a change in the mock reaches the record.
        .set("CACHE__PROFILE_TTL", "0s")
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_USER", "null")
        .set("SERVER__RATE_LIMIT__EXCHANGE_PER_IP", "null")
        .set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "path")
}

/// Waits until the gateway has migrated and reaches PostgreSQL.
async fn postgres_ready(gw: &Gateway) {
    until("the gateway reaches PostgreSQL with its schema", || async {
        check_detail(&readyz(gw).await, "postgres").starts_with("reachable, schema version 1")
    })
    .await;
}

/// `(kind, changed_fields, reason)` of a user's events, oldest first.
async fn events(db: &tokio_postgres::Client, oid: &str) -> Vec<(String, Vec<String>, Option<String>)> {
    let rows = db
        .query(
            "SELECT e.kind, e.changed_fields, e.reason FROM user_events e JOIN users u ON u.id = e.user_id \
             WHERE u.oid = $1 ORDER BY e.id",
            &[&oid],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

fn kinds(events: &[(String, Vec<String>, Option<String>)]) -> Vec<&str> {
    events.iter().map(|e| e.0.as_str()).collect()
}

async fn sign_in(gw: &Gateway, mock: &MockEntra, login: &str) -> serde_json::Value {
    let (status, _, body) = exchange(gw, &token_for(mock, login)).await;
    assert_eq!(status, 200, "{login}: {body}");
    body
}

#[tokio::test]
async fn sign_ins_upsert_one_row_per_user_and_record_events_with_field_names_only() {
    let pg = PostgresServer::start().await;
    let url = pg.create_db("directory").await;
    let db = pg.client("directory").await;
    let mock = mock().await;
    let gw = builder(&mock, &url).start().await;
    postgres_ready(&gw).await;

    let body = sign_in(&gw, &mock, "alice").await;
    let row = db
        .query_one(
            "SELECT id::text, tenant_id, email, display_name, given_name, surname, job_title, department, \
             created_at = updated_at, last_login_at IS NOT NULL, disabled_at IS NULL FROM users WHERE oid = $1",
            &[&ALICE],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), body["user"]["id"].as_str().unwrap(), "the row's id is the token's sub");
    assert_eq!(row.get::<_, String>(1), mock.settings().tenant_id);
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("alice@contoso.example"));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("Alice Jørgensen"));
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("Alice"));
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("Jørgensen"));
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("Engineer"));
    assert_eq!(row.get::<_, Option<String>>(7).as_deref(), Some("Platform"));
    assert!(row.get::<_, bool>(8) && row.get::<_, bool>(9) && row.get::<_, bool>(10));
    assert_eq!(kinds(&events(&db, ALICE).await), ["created", "signed_in"]);

    sign_in(&gw, &mock, "alice").await;
    assert_eq!(events(&db, ALICE).await.len(), 2, "an unchanged profile is not written at each sign-in");

    mock.state().set_display_name(ALICE, "Alice Smith");
    sign_in(&gw, &mock, "alice").await;
    let history = events(&db, ALICE).await;
    assert_eq!(kinds(&history), ["created", "signed_in", "profile_changed", "signed_in"]);
    assert_eq!(history[2].1, ["displayName"], "the changed field's name");
    let name: Option<String> =
        db.query_one("SELECT display_name FROM users WHERE oid = $1", &[&ALICE]).await.unwrap().get(0);
    assert_eq!(name.as_deref(), Some("Alice Smith"));
    let leaked: i64 = db
        .query_one("SELECT count(*) FROM user_events WHERE array_to_string(changed_fields, ',') ILIKE '%alice%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "events hold field names, never values");

    sign_in(&gw, &mock, "bob").await;
    let users: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(users, 2);
    assert_eq!(metric(&gw, "entra_gateway_user_store_up{store=\"postgres\"}").await, 1.0);
}

/// The advisory lock the gateway migrates under (README, "User directory in PostgreSQL").
const MIGRATION_LOCK: i64 = 0x656e_7472_615f_6777;

#[tokio::test]
async fn replicas_and_migrate_commands_starting_together_apply_each_migration_once() {
    let pg = PostgresServer::start().await;
    let url = pg.create_db("race").await;
    let mock = mock().await;
    let (config, dir) = GatewayBuilder::new(&mock).key("k1", SigningAlgorithm::ES256, Some(deployment_key())).config();
    let path = dir.path().join("gateway.yaml");
    write_config(&config, &path);
    let migrate = || {
        let (path, url) = (path.clone(), url.clone());
        tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
                .args(["migrate", "--config"])
                .arg(&path)
                .env("ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL", &url)
                .output()
                .await
                .unwrap()
        })
    };
    // The test holds the migration lock while three `migrate` processes and two replicas
    // start on the empty database; once all five wait for it, it lets go and they race.
    let holder = pg.client("race").await;
    holder.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.unwrap();
    let commands = [migrate(), migrate(), migrate()];
    let (a, b) = (builder(&mock, &url).start().await, builder(&mock, &url).start().await);
    until("all five wait for the migration lock", || async {
        let waiting: i64 = holder
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        waiting == 5
    })
    .await;
    holder.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.unwrap();
    let mut applied_now = 0;
    for command in commands {
        let out = command.await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "migrate failed: {stdout} {stderr}");
        applied_now += stdout.contains("applied migration(s) [1]") as usize;
        assert!(stdout.contains("version 1"), "{stdout}");
    }
    postgres_ready(&a).await;
    postgres_ready(&b).await;
    assert!(applied_now <= 1, "one of the five applied the migration");
    let db = pg.client("race").await;
    let rows = db.query("SELECT version, name FROM entra_gateway_migrations", &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "one row per migration");
    assert_eq!((rows[0].get::<_, i32>(0), rows[0].get::<_, String>(1).as_str()), (1, "users"));
    sign_in(&a, &mock, "alice").await;
    sign_in(&b, &mock, "bob").await;
    let users: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(users, 2);

    // An applied migration that was edited stops the gateway from using the database.
    db.batch_execute("UPDATE entra_gateway_migrations SET checksum = 'edited'").await.unwrap();
    let out = migrate().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("an applied migration was edited"));
}

#[tokio::test]
async fn postgresql_restarted_under_load_known_users_go_on_first_sign_ins_fail_closed_and_writes_catch_up() {
    let mut pg = PostgresServer::start().await;
    let url = pg.create_db("restart").await;
    let redis = RedisServer::start().await;
    let mock = mock().await;
    let replica = || builder(&mock, &url).set("CACHE__REDIS_URL", redis.url()).start();
    let (a, b) = (replica().await, replica().await);
    postgres_ready(&a).await;
    postgres_ready(&b).await;
    // Alice and dave signed in before (on replica A only); bob never did.
    let alice = sign_in(&a, &mock, "alice").await["access_token"].as_str().unwrap().to_string();
    sign_in(&a, &mock, "dave").await;

    // Load on both replicas for the whole outage: sign-ins of the known users and requests
    // with alice's session. Every answer must be 200.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for gw in [&a, &b] {
        for login in ["alice", "dave"] {
            let (url, stop, token) = (gw.url("/auth/exchange"), stop.clone(), token_for(&mock, login));
            load.push(tokio::spawn(async move {
                let (mut statuses, c) = (Vec::new(), client());
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(c.post(&url).bearer_auth(&token).send().await.unwrap().status().as_u16());
                }
                statuses
            }));
        }
        let (url, stop, token) = (gw.url("/auth/verify/api"), stop.clone(), alice.clone());
        load.push(tokio::spawn(async move {
            let (mut statuses, c) = (Vec::new(), client());
            while !stop.load(Ordering::Relaxed) {
                statuses.push(c.get(&url).bearer_auth(&token).send().await.unwrap().status().as_u16());
            }
            statuses
        }));
    }

    pg.stop();
    for gw in [&a, &b] {
        until("the replica sees PostgreSQL down", || async {
            metric(gw, "entra_gateway_user_store_up{store=\"postgres\"}").await == 0.0
        })
        .await;
    }
    // Alice's profile changes while PostgreSQL is down: her sign-in on B (which never saw
    // her: the record comes from Redis) goes on and the write waits.
    mock.state().set_display_name(ALICE, "Alice Outage");
    sign_in(&b, &mock, "alice").await;
    let (status, _, body) = exchange(&b, &token_for(&mock, "bob")).await;
    assert_eq!(status, 503, "a first sign-in fails closed: {body}");
    assert!(body["error_description"].as_str().unwrap().contains("first sign-in"), "{body}");
    let ready = client().get(b.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "PostgreSQL down leaves the replica ready (degraded)");
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(check_detail(&ready, "postgres").starts_with("degraded: unreachable"), "{ready}");
    assert!(metric(&b, "entra_gateway_user_store_pending_writes").await >= 1.0);

    pg.start_again().await;
    for gw in [&a, &b] {
        until("the queued writes reached PostgreSQL", || async {
            metric(gw, "entra_gateway_user_store_up{store=\"postgres\"}").await == 1.0
                && metric(gw, "entra_gateway_user_store_pending_writes").await == 0.0
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "every request under the restart answered 200: {statuses:?}");
        answered += statuses.len();
    }
    eprintln!("postgres restart under load: {answered} requests, all 200");

    let db = pg.client("restart").await;
    let name: Option<String> =
        db.query_one("SELECT display_name FROM users WHERE oid = $1", &[&ALICE]).await.unwrap().get(0);
    assert_eq!(name.as_deref(), Some("Alice Outage"), "the queued profile change was written");
    assert!(kinds(&events(&db, ALICE).await).contains(&"profile_changed"));
    assert_eq!(db.query("SELECT 1 FROM users WHERE oid = $1", &[&BOB]).await.unwrap().len(), 0);
    sign_in(&b, &mock, "bob").await;
    assert_eq!(kinds(&events(&db, BOB).await), ["created", "signed_in"]);
}

#[tokio::test]
async fn a_users_row_the_gateway_did_not_write_signs_nobody_in_as_someone_else() {
    let pg = PostgresServer::start().await;
    let url = pg.create_db("planted").await;
    let db = pg.client("planted").await;
    let mock = mock().await;
    let gw = builder(&mock, &url).start().await;
    postgres_ready(&gw).await;
    let bob_id = sign_in(&gw, &mock, "bob").await["user"]["id"].as_str().unwrap().to_string();
    // Someone with write access to the table gives alice's (tenant, oid) bob's id.
    db.execute("DELETE FROM users WHERE oid = $1", &[&BOB]).await.unwrap();
    db.execute(
        "INSERT INTO users (id, tenant_id, oid, created_at, updated_at) VALUES ($1::text::uuid, $2, $3, now(), now())",
        &[&bob_id, &mock.settings().tenant_id, &ALICE],
    )
    .await
    .unwrap();
    let (status, _, body) = exchange(&gw, &token_for(&mock, "alice")).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains(&bob_id), "{body}");
    let said = body["error_description"].as_str().unwrap();
    assert!(!said.contains("first sign-in"), "a refused row is not an outage: {said}");

    db.execute("DELETE FROM users WHERE oid = $1", &[&ALICE]).await.unwrap();
    let alice = sign_in(&gw, &mock, "alice").await;
    assert_ne!(alice["user"]["id"].as_str().unwrap(), bob_id);
}

#[tokio::test]
async fn tls_to_postgresql_is_verified_against_the_configured_ca() {
    let pg = PostgresServer::start().await;
    pg.create_db("tls").await;
    let db = pg.client("tls").await;
    let mock = mock().await;
    let trusted = builder(&mock, &pg.tls_url("tls"));
    let ca = trusted.dir_path().join("postgres-ca.pem");
    std::fs::write(&ca, &pg.ca_pem).unwrap();
    let gw = trusted.set("DIRECTORY__POSTGRES_CA_FILE", ca.display().to_string()).start().await;
    postgres_ready(&gw).await;
    sign_in(&gw, &mock, "alice").await;
    let encrypted: bool = db
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'entra-gateway'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the gateway's connections use TLS");

    // Without the CA the server's certificate is not trusted: nothing is written.
    let untrusting = builder(&mock, &pg.tls_url("tls")).start().await;
    until("the untrusting replica reports why", || async {
        check_detail(&readyz(&untrusting).await, "postgres").contains("certificate")
    })
    .await;
    let (status, _, body) = exchange(&untrusting, &token_for(&mock, "bob")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(db.query("SELECT 1 FROM users WHERE oid = $1", &[&BOB]).await.unwrap().len(), 0);
}

#[tokio::test]
async fn continuous_access_and_the_kill_switch_are_recorded_in_the_users_history() {
    let pg = PostgresServer::start().await;
    let url = pg.create_db("history").await;
    let db = pg.client("history").await;
    let mock = mock().await;
    let gw = builder(&mock, &url)
        .set("ENTRA__CONTINUOUS_ACCESS__ENABLED", "true")
        .set("ENTRA__CONTINUOUS_ACCESS__POLL_INTERVAL", "1s")
        .start()
        .await;
    postgres_ready(&gw).await;
    sign_in(&gw, &mock, "alice").await;
    sign_in(&gw, &mock, "bob").await;
    until("the directory is synced", || async {
        check_detail(&readyz(&gw).await, "directory_sync").starts_with("in sync")
    })
    .await;

    let tid = mock.settings().tenant_id.clone();
    let kill = client().post(gw.admin_url(&format!("/admin/users/{tid}/{ALICE}/revoke"))).send().await.unwrap();
    assert_eq!(kill.status(), 204);
    until("the kill switch is recorded", || async {
        events(&db, ALICE).await.iter().any(|e| e.0 == "access_revoked" && e.2.as_deref() == Some("kill_switch"))
    })
    .await;

    mock.state().disable_user(BOB);
    until("bob's disable is recorded", || async {
        let disabled = db.query("SELECT 1 FROM users WHERE oid = $1 AND disabled_at IS NOT NULL", &[&BOB]);
        disabled.await.unwrap().len() == 1 && kinds(&events(&db, BOB).await).contains(&"disabled")
    })
    .await;
    mock.state().enable_user(BOB);
    until("bob's enable clears disabled_at", || async {
        db.query("SELECT 1 FROM users WHERE oid = $1 AND disabled_at IS NULL", &[&BOB]).await.unwrap().len() == 1
    })
    .await;
    assert_eq!(
        kinds(&events(&db, BOB).await).iter().filter(|k| **k == "disabled").count(),
        1,
        "each change is recorded once"
    );
}
