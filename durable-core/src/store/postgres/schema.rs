//! The tables in their own PostgreSQL schema, and the versioned migrations that create and
//! upgrade them at start-up. Concurrent start-ups are safe: migrations run in one
//! transaction under a transaction-scoped advisory lock keyed by the schema name.

use tokio_postgres::Client;

use super::error::pg_in;
use crate::store::StoreError;
use crate::store::StoreResult;

/// The newest schema version this build understands.
pub const SCHEMA_VERSION: i32 = 6;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. A released migration is
/// never edited; a change is a new one.
const MIGRATIONS: &[&str] = &[
    // 1: instances, histories, the inbox (messages, timers) and the activity queue.
    // Times are `timestamptz` (microseconds); JSON columns hold serde_json text.
    "CREATE TABLE instances(
        id text PRIMARY KEY,
        execution_id text NOT NULL,
        name text NOT NULL,
        version text,
        status text NOT NULL,
        input text,
        output text,
        failure text,
        custom_status text,
        created_at timestamptz NOT NULL,
        last_updated_at timestamptz NOT NULL,
        parent text,
        lease_token text,
        lease_owner text,
        lease_expires_at timestamptz,
        history_len bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX instances_created ON instances(created_at, id);
    CREATE INDEX instances_status ON instances(status);
    CREATE INDEX instances_lease_owner ON instances(lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX instances_lease_expires ON instances(lease_expires_at)
        WHERE lease_expires_at IS NOT NULL;
    CREATE TABLE history(
        instance_id text NOT NULL,
        seq bigint NOT NULL,
        event text NOT NULL,
        PRIMARY KEY(instance_id, seq)
    );
    CREATE TABLE messages(
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        instance_id text NOT NULL,
        visible_at timestamptz NOT NULL,
        message text NOT NULL
    );
    CREATE INDEX messages_instance ON messages(instance_id, id);
    CREATE INDEX messages_visible ON messages(visible_at, id);
    CREATE TABLE activities(
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        instance_id text NOT NULL,
        item text NOT NULL,
        lease_token text,
        lease_owner text,
        visible_at timestamptz NOT NULL,
        dequeue_count integer NOT NULL DEFAULT 0
    );
    CREATE INDEX activities_visible ON activities(visible_at, id);
    CREATE INDEX activities_instance ON activities(instance_id);
    CREATE INDEX activities_lease_owner ON activities(lease_owner) WHERE lease_owner IS NOT NULL;
    -- One episode's commit in one statement (see `sql::COMMIT_EPISODE`): the fence, then
    -- every write. Returns ok = false, having changed nothing, when the fence fails.
    CREATE FUNCTION commit_episode(
        p_id text, p_token text, p_exec text, p_hlen bigint,
        p_done_id bigint, p_done_token text,
        p_consumed bigint[], p_replace boolean, p_events text[],
        p_status text, p_execution_id text, p_name text, p_version text, p_input text,
        p_output text, p_failure text, p_custom text, p_created timestamptz,
        p_updated timestamptz, p_parent text,
        p_items text[], p_tokens text[], p_owner text, p_lease bigint,
        p_targets text[], p_at timestamptz[], p_bodies text[],
        OUT ok boolean, OUT act_ids bigint[], OUT act_tokens text[],
        OUT sent_to text[], OUT sent_delayed boolean[])
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        cur record;
        first_seq bigint;
    BEGIN
        ok := false;
        SELECT lease_token, history_len, execution_id,
               (lease_expires_at IS NULL OR lease_expires_at <= now()) AS free
          INTO cur FROM instances WHERE id = p_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_token IS NOT NULL THEN
            IF cur.lease_token IS DISTINCT FROM p_token THEN
                RETURN;
            END IF;
        ELSIF NOT cur.free OR cur.execution_id <> p_exec OR cur.history_len <> p_hlen
            OR EXISTS (SELECT 1 FROM messages WHERE instance_id = p_id AND visible_at <= now())
        THEN
            RETURN;
        END IF;
        IF p_done_id IS NOT NULL THEN
            DELETE FROM activities WHERE id = p_done_id AND lease_token = p_done_token;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF cardinality(p_consumed) > 0 THEN
            DELETE FROM messages WHERE instance_id = p_id AND id = ANY(p_consumed);
        END IF;
        IF p_replace THEN
            DELETE FROM history WHERE instance_id = p_id;
            first_seq := 0;
        ELSE
            first_seq := cur.history_len;
        END IF;
        IF cardinality(p_events) > 0 THEN
            INSERT INTO history(instance_id, seq, event)
              SELECT p_id, first_seq + t.o - 1, t.e
              FROM unnest(p_events) WITH ORDINALITY AS t(e, o);
        END IF;
        IF p_status IS NOT NULL THEN
            UPDATE instances SET execution_id = p_execution_id, name = p_name,
                version = p_version, status = p_status, input = p_input, output = p_output,
                failure = p_failure, custom_status = p_custom, created_at = p_created,
                last_updated_at = p_updated, parent = p_parent, lease_token = NULL,
                lease_owner = NULL, lease_expires_at = NULL,
                history_len = first_seq + coalesce(cardinality(p_events), 0)
              WHERE id = p_id;
        ELSE
            UPDATE instances SET lease_token = NULL, lease_owner = NULL,
                lease_expires_at = NULL,
                history_len = first_seq + coalesce(cardinality(p_events), 0)
              WHERE id = p_id;
        END IF;
        IF cardinality(p_items) > 0 THEN
            WITH ins AS (
                INSERT INTO activities(instance_id, item, lease_token, lease_owner, visible_at,
                    dequeue_count)
                SELECT p_id, t.item, t.tok,
                  CASE WHEN t.tok IS NULL THEN NULL ELSE p_owner END,
                  CASE WHEN t.tok IS NULL THEN now()
                    ELSE now() + p_lease * interval '1 microsecond' END,
                  CASE WHEN t.tok IS NULL THEN 0 ELSE 1 END
                FROM unnest(p_items, p_tokens) WITH ORDINALITY AS t(item, tok, o)
                ORDER BY t.o
                RETURNING id, lease_token)
            SELECT array_agg(id), array_agg(lease_token) INTO act_ids, act_tokens FROM ins;
        END IF;
        IF cardinality(p_targets) > 0 THEN
            WITH m AS (
                INSERT INTO messages(instance_id, visible_at, message)
                SELECT t.i, coalesce(t.v, now()), t.m
                FROM unnest(p_targets, p_at, p_bodies) WITH ORDINALITY AS t(i, v, m, o)
                WHERE EXISTS (SELECT 1 FROM instances x WHERE x.id = t.i FOR KEY SHARE)
                ORDER BY t.o
                RETURNING instance_id, visible_at > now() AS delayed)
            SELECT array_agg(instance_id), array_agg(delayed) INTO sent_to, sent_delayed FROM m;
        END IF;
        ok := true;
    END
    $fn$;",
    // 2: instances count their hand-outs since the last commit (poison episodes); a
    // commit resets the count.
    "ALTER TABLE instances ADD COLUMN dequeue_count integer NOT NULL DEFAULT 0;
    CREATE OR REPLACE FUNCTION commit_episode(
        p_id text, p_token text, p_exec text, p_hlen bigint,
        p_done_id bigint, p_done_token text,
        p_consumed bigint[], p_replace boolean, p_events text[],
        p_status text, p_execution_id text, p_name text, p_version text, p_input text,
        p_output text, p_failure text, p_custom text, p_created timestamptz,
        p_updated timestamptz, p_parent text,
        p_items text[], p_tokens text[], p_owner text, p_lease bigint,
        p_targets text[], p_at timestamptz[], p_bodies text[],
        OUT ok boolean, OUT act_ids bigint[], OUT act_tokens text[],
        OUT sent_to text[], OUT sent_delayed boolean[])
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        cur record;
        first_seq bigint;
    BEGIN
        ok := false;
        SELECT lease_token, history_len, execution_id,
               (lease_expires_at IS NULL OR lease_expires_at <= now()) AS free
          INTO cur FROM instances WHERE id = p_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_token IS NOT NULL THEN
            IF cur.lease_token IS DISTINCT FROM p_token THEN
                RETURN;
            END IF;
        ELSIF NOT cur.free OR cur.execution_id <> p_exec OR cur.history_len <> p_hlen
            OR EXISTS (SELECT 1 FROM messages WHERE instance_id = p_id AND visible_at <= now())
        THEN
            RETURN;
        END IF;
        IF p_done_id IS NOT NULL THEN
            DELETE FROM activities WHERE id = p_done_id AND lease_token = p_done_token;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF cardinality(p_consumed) > 0 THEN
            DELETE FROM messages WHERE instance_id = p_id AND id = ANY(p_consumed);
        END IF;
        IF p_replace THEN
            DELETE FROM history WHERE instance_id = p_id;
            first_seq := 0;
        ELSE
            first_seq := cur.history_len;
        END IF;
        IF cardinality(p_events) > 0 THEN
            INSERT INTO history(instance_id, seq, event)
              SELECT p_id, first_seq + t.o - 1, t.e
              FROM unnest(p_events) WITH ORDINALITY AS t(e, o);
        END IF;
        IF p_status IS NOT NULL THEN
            UPDATE instances SET execution_id = p_execution_id, name = p_name,
                version = p_version, status = p_status, input = p_input, output = p_output,
                failure = p_failure, custom_status = p_custom, created_at = p_created,
                last_updated_at = p_updated, parent = p_parent, lease_token = NULL,
                lease_owner = NULL, lease_expires_at = NULL, dequeue_count = 0,
                history_len = first_seq + coalesce(cardinality(p_events), 0)
              WHERE id = p_id;
        ELSE
            UPDATE instances SET lease_token = NULL, lease_owner = NULL,
                lease_expires_at = NULL, dequeue_count = 0,
                history_len = first_seq + coalesce(cardinality(p_events), 0)
              WHERE id = p_id;
        END IF;
        IF cardinality(p_items) > 0 THEN
            WITH ins AS (
                INSERT INTO activities(instance_id, item, lease_token, lease_owner, visible_at,
                    dequeue_count)
                SELECT p_id, t.item, t.tok,
                  CASE WHEN t.tok IS NULL THEN NULL ELSE p_owner END,
                  CASE WHEN t.tok IS NULL THEN now()
                    ELSE now() + p_lease * interval '1 microsecond' END,
                  CASE WHEN t.tok IS NULL THEN 0 ELSE 1 END
                FROM unnest(p_items, p_tokens) WITH ORDINALITY AS t(item, tok, o)
                ORDER BY t.o
                RETURNING id, lease_token)
            SELECT array_agg(id), array_agg(lease_token) INTO act_ids, act_tokens FROM ins;
        END IF;
        IF cardinality(p_targets) > 0 THEN
            WITH m AS (
                INSERT INTO messages(instance_id, visible_at, message)
                SELECT t.i, coalesce(t.v, now()), t.m
                FROM unnest(p_targets, p_at, p_bodies) WITH ORDINALITY AS t(i, v, m, o)
                WHERE EXISTS (SELECT 1 FROM instances x WHERE x.id = t.i FOR KEY SHARE)
                ORDER BY t.o
                RETURNING instance_id, visible_at > now() AS delayed)
            SELECT array_agg(instance_id), array_agg(delayed) INTO sent_to, sent_delayed FROM m;
        END IF;
        ok := true;
    END
    $fn$;",
    // 3: an index on the instance id in byte order, so a listing or purge filtered by an id
    // prefix reads the range of ids with that prefix (`id COLLATE "C" >= prefix AND
    // id COLLATE "C" < bound`) instead of every instance: the primary key follows the
    // database's collation, in which a prefix is not a range.
    "CREATE INDEX IF NOT EXISTS instances_id_bytes ON instances(id COLLATE \"C\");",
    // 4: a running activity's latest heartbeat details, written with its lease renewals (a
    // column of their own, so frequent writes do not rewrite the item and its input); a
    // later hand-out of the item prefers them to the item's own.
    "ALTER TABLE activities ADD COLUMN heartbeat_details text;",
    // 5: children by their parent's instance id, so a purge by filter finds the
    // sub-orchestrations of the instances it deletes (parent-close policy) with one index
    // probe each. Partial: only sub-orchestrations have a parent.
    "CREATE INDEX IF NOT EXISTS instances_parent ON instances((parent::jsonb ->> 'instance_id'))
        WHERE parent IS NOT NULL;",
    // 6: one history row per episode, its events in the compact encoding of the store's
    // `episode` module (`events`), instead of one JSON row per event (`event`). Rows written
    // before stay as they are (one event as JSON) and are read in order with the new ones,
    // so migrating rewrites nothing. A row's `ExecutionStarted` input or `ExecutionCompleted`
    // result may refer to the instance row's `input` / `output`: when a commit would change
    // those under a kept history, the function changes nothing and answers `materialize`,
    // and the store commits in a transaction that first writes the old values into the
    // rows referring to them.
    "ALTER TABLE history ALTER COLUMN event DROP NOT NULL;
    ALTER TABLE history ADD COLUMN events bytea;
    DROP FUNCTION commit_episode(text, text, text, bigint, bigint, text, bigint[], boolean,
        text[], text, text, text, text, text, text, text, text, timestamptz, timestamptz, text,
        text[], text[], text, bigint, text[], timestamptz[], text[]);
    CREATE FUNCTION commit_episode(
        p_id text, p_token text, p_exec text, p_hlen bigint,
        p_done_id bigint, p_done_token text,
        p_consumed bigint[], p_replace boolean, p_events bytea, p_count bigint,
        p_refers boolean,
        p_status text, p_execution_id text, p_name text, p_version text, p_input text,
        p_output text, p_failure text, p_custom text, p_created timestamptz,
        p_updated timestamptz, p_parent text,
        p_items text[], p_tokens text[], p_owner text, p_lease bigint,
        p_targets text[], p_at timestamptz[], p_bodies text[],
        OUT ok boolean, OUT act_ids bigint[], OUT act_tokens text[],
        OUT sent_to text[], OUT sent_delayed boolean[], OUT materialize boolean)
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
    DECLARE
        cur record;
        first_seq bigint;
    BEGIN
        ok := false;
        materialize := false;
        SELECT lease_token, history_len, execution_id,
               (lease_expires_at IS NULL OR lease_expires_at <= now()) AS free,
               CASE WHEN p_status IS NOT NULL AND p_refers AND NOT p_replace
                 THEN (input IS NULL OR input IS NOT DISTINCT FROM p_input)
                   AND (output IS NULL OR output IS NOT DISTINCT FROM p_output)
                 ELSE true END AS kept
          INTO cur FROM instances WHERE id = p_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF p_token IS NOT NULL THEN
            IF cur.lease_token IS DISTINCT FROM p_token THEN
                RETURN;
            END IF;
        ELSIF NOT cur.free OR cur.execution_id <> p_exec OR cur.history_len <> p_hlen
            OR EXISTS (SELECT 1 FROM messages WHERE instance_id = p_id AND visible_at <= now())
        THEN
            RETURN;
        END IF;
        IF NOT cur.kept AND cur.history_len > 0 THEN
            materialize := true;
            RETURN;
        END IF;
        IF p_done_id IS NOT NULL THEN
            DELETE FROM activities WHERE id = p_done_id AND lease_token = p_done_token;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        END IF;
        IF cardinality(p_consumed) > 0 THEN
            DELETE FROM messages WHERE instance_id = p_id AND id = ANY(p_consumed);
        END IF;
        IF p_replace THEN
            DELETE FROM history WHERE instance_id = p_id;
            first_seq := 0;
        ELSE
            first_seq := cur.history_len;
        END IF;
        IF p_events IS NOT NULL THEN
            INSERT INTO history(instance_id, seq, events) VALUES (p_id, first_seq, p_events);
        END IF;
        IF p_status IS NOT NULL THEN
            UPDATE instances SET execution_id = p_execution_id, name = p_name,
                version = p_version, status = p_status, input = p_input, output = p_output,
                failure = p_failure, custom_status = p_custom, created_at = p_created,
                last_updated_at = p_updated, parent = p_parent, lease_token = NULL,
                lease_owner = NULL, lease_expires_at = NULL, dequeue_count = 0,
                history_len = first_seq + coalesce(p_count, 0)
              WHERE id = p_id;
        ELSE
            UPDATE instances SET lease_token = NULL, lease_owner = NULL,
                lease_expires_at = NULL, dequeue_count = 0,
                history_len = first_seq + coalesce(p_count, 0)
              WHERE id = p_id;
        END IF;
        IF cardinality(p_items) > 0 THEN
            WITH ins AS (
                INSERT INTO activities(instance_id, item, lease_token, lease_owner, visible_at,
                    dequeue_count)
                SELECT p_id, t.item, t.tok,
                  CASE WHEN t.tok IS NULL THEN NULL ELSE p_owner END,
                  CASE WHEN t.tok IS NULL THEN now()
                    ELSE now() + p_lease * interval '1 microsecond' END,
                  CASE WHEN t.tok IS NULL THEN 0 ELSE 1 END
                FROM unnest(p_items, p_tokens) WITH ORDINALITY AS t(item, tok, o)
                ORDER BY t.o
                RETURNING id, lease_token)
            SELECT array_agg(id), array_agg(lease_token) INTO act_ids, act_tokens FROM ins;
        END IF;
        IF cardinality(p_targets) > 0 THEN
            WITH m AS (
                INSERT INTO messages(instance_id, visible_at, message)
                SELECT t.i, coalesce(t.v, now()), t.m
                FROM unnest(p_targets, p_at, p_bodies) WITH ORDINALITY AS t(i, v, m, o)
                WHERE EXISTS (SELECT 1 FROM instances x WHERE x.id = t.i FOR KEY SHARE)
                ORDER BY t.o
                RETURNING instance_id, visible_at > now() AS delayed)
            SELECT array_agg(instance_id), array_agg(delayed) INTO sent_to, sent_delayed FROM m;
        END IF;
        ok := true;
    END
    $fn$;",
];

/// Checks a schema name: a plain lower-case identifier, so it needs no quoting anywhere
/// (search path, channel names) and cannot smuggle SQL.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a usable schema name: use 1 to 48 of a-z, 0-9 and _, starting with \
             a letter or _ (and not pg_)"
        ))
    }
}

/// The advisory lock key of `schema`'s migrations (stable across builds).
fn lock_key(schema: &str) -> i64 {
    // FNV-1a, 64 bits: stable, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"durable-migrations:".iter().chain(schema.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Creates the schema and applies the migrations it lacks. Refuses a schema of a newer
/// build and a schema that holds tables of another application; both are left unchanged.
pub async fn migrate(client: &mut Client, schema: &str) -> StoreResult<()> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// [`migrate`], stopping at version `to` (tests build schemas of earlier versions).
pub(super) async fn migrate_to(client: &mut Client, schema: &str, to: i32) -> StoreResult<()> {
    check_schema_name(schema).map_err(StoreError::failed)?;
    let failed = |e| pg_in(format!("cannot set up the PostgreSQL schema '{schema}'"), e);
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .await
        .map_err(failed)?;
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let version: i32 = if tables.iter().any(|t| t == "schema_migrations") {
        tx.query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(failed)?
        .get(0)
    } else if tables.is_empty() {
        0
    } else {
        let mut shown = tables
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if tables.len() > 5 {
            shown.push_str(", ...");
        }
        return Err(StoreError::failed(format!(
            "the PostgreSQL schema '{schema}' holds tables that are not durable's ({shown}); it \
             was left unchanged. Choose another schema (DURABLE_DB_SCHEMA)"
        )));
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::failed(format!(
            "the PostgreSQL schema '{schema}' has version {version}; this build understands up to \
             {SCHEMA_VERSION}. Upgrade durable to use it (it was left unchanged)"
        )));
    }
    if version >= to {
        return tx.commit().await.map_err(failed);
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations(
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(failed)?;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to as usize)
        .skip(version as usize)
    {
        let v = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute("INSERT INTO schema_migrations(version) VALUES ($1)", &[&v])
            .await
            .map_err(failed)?;
        tracing::info!(schema, version = v, "applied a PostgreSQL schema migration");
    }
    tx.commit().await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema_name("durable").is_ok());
        assert!(check_schema_name("_t_12").is_ok());
        for bad in [
            "",
            "Durable",
            "a-b",
            "1a",
            "pg_x",
            "a;drop",
            &"x".repeat(49),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
        assert_eq!(MIGRATIONS.len() as i32, SCHEMA_VERSION);
    }
}
