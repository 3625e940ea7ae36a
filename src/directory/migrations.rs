//! The PostgreSQL schema of the user directory: versioned migrations embedded in the binary.
//!
//! Owns: the ordered list of migrations (`migrations/NNNN_name.sql`), the bookkeeping table
//! `entra_gateway_migrations` (version, name, SHA-256 of the SQL, when applied), and applying
//! the missing ones in one transaction that holds `pg_advisory_xact_lock`, so that replicas
//! starting together apply each migration exactly once and never see half a schema. Must not:
//! run an applied migration again, accept one whose text changed since it was applied, or run
//! any other SQL.

use sha2::{Digest, Sha256};

/// One schema change. Versions are consecutive from 1; an applied one is never edited.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "users", sql: include_str!("migrations/0001_users.sql") }];

/// The advisory lock every replica takes while it migrates (an arbitrary, fixed id).
const LOCK_ID: i64 = 0x656e_7472_615f_6777;

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS entra_gateway_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "migration {version} ({name}) differs from the one applied to this database (checksum {found}, \
         expected {expected}): an applied migration was edited; restore it and add a new migration instead"
    )]
    Changed { version: i32, name: String, found: String, expected: String },
}

impl MigrateError {
    /// A connection or server outage (worth retrying), not a problem with the schema.
    pub fn is_outage(&self) -> bool {
        matches!(self, MigrateError::Db(e) if e.code().is_none())
    }
}

/// The SHA-256 of a migration's text, hex.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Migrations this call applied (none when another replica already had).
    pub now: Vec<i32>,
    /// The newest version in the database afterwards (may be newer than this binary's during
    /// a rolling upgrade: newer migrations only add).
    pub version: i32,
}

/// Brings the schema up to date, under the advisory lock, in one transaction.
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<Applied, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID]).await?;
    tx.batch_execute(BOOKKEEPING).await?;
    let rows = tx.query("SELECT version, name, checksum FROM entra_gateway_migrations ORDER BY version", &[]).await?;
    let applied: Vec<(i32, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    for m in MIGRATIONS {
        if let Some((_, _, found)) = applied.iter().find(|(v, _, _)| *v == m.version) {
            let expected = checksum(m.sql);
            if *found != expected {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name.into(),
                    found: found.clone(),
                    expected,
                });
            }
        }
    }
    let mut now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| applied.iter().all(|(v, _, _)| *v != m.version)) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO entra_gateway_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await?;
        now.push(m.version);
    }
    tx.commit().await?;
    let newest_applied = applied.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
    let version = now.iter().copied().max().unwrap_or(0).max(newest_applied);
    Ok(Applied { now, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one_and_names_match_the_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn the_checksum_changes_with_any_edit() {
        let sql = MIGRATIONS[0].sql;
        assert_eq!(checksum(sql), checksum(sql));
        assert_ne!(checksum(sql), checksum(&format!("{sql} ")));
        assert_eq!(checksum(sql).len(), 64);
    }
}
