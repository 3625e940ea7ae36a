-- entra-gateway user directory, version 1: one row per user who signed in, and their history.
-- Applied by the gateway at start under an advisory lock; never edit an applied migration
-- (the gateway refuses to start on a changed checksum): add the next file instead.

CREATE TABLE users (
    -- The stable internal id: uuid v5 of "{tenant_id}:{oid}", the `sub` of the internal token.
    id                  uuid        PRIMARY KEY,
    tenant_id           text        NOT NULL,
    oid                 text        NOT NULL,
    email               text,
    display_name        text,
    user_principal_name text,
    given_name          text,
    surname             text,
    job_title           text,
    department          text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    last_login_at       timestamptz,
    -- Set when continuous access saw the account disabled in Entra ID; cleared when it is
    -- enabled again or the user signs in. History only: Entra ID decides access.
    disabled_at         timestamptz,
    CONSTRAINT users_tenant_oid UNIQUE (tenant_id, oid)
);

CREATE TABLE user_events (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text        NOT NULL
                   CHECK (kind IN ('created', 'profile_changed', 'signed_in', 'disabled', 'access_revoked')),
    -- Names of the profile fields that changed (profile_changed), never their values.
    changed_fields text[]      NOT NULL DEFAULT '{}',
    -- Why access was revoked (access_revoked): deleted, removed, sessions_revoked, kill_switch.
    reason         text
);

CREATE INDEX user_events_user_at ON user_events (user_id, at);
