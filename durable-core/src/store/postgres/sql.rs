//! The statements, prepared once per connection. Tables are unqualified: each connection's
//! `search_path` is the store's schema. Every time comparison uses the database's `now()`.

/// The columns an instance's state is read from, in the order [`super::ops::read_state`]
/// decodes them.
macro_rules! state_cols {
    () => {
        "id, execution_id, name, version, status, input, output, failure, custom_status, \
         created_at, last_updated_at, parent, history_len"
    };
}
pub(crate) use state_cols;

/// The state columns and the hand-out count, returned by the statements that lease an
/// instance.
macro_rules! leased_cols {
    () => {
        concat!(state_cols!(), ", dequeue_count")
    };
}

/// A new instance and its start message, when no instance has the id (one statement).
pub const CREATE: &str = "WITH ins AS (
    INSERT INTO instances(id, execution_id, name, version, status, input, output, failure,
        custom_status, created_at, last_updated_at, parent, history_len)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0)
    ON CONFLICT (id) DO NOTHING RETURNING id)
  INSERT INTO messages(instance_id, visible_at, message)
  SELECT id, coalesce($13::timestamptz, now()), $14 FROM ins RETURNING id";

/// The status of an instance, locked for replacing it.
pub const STATUS_FOR_UPDATE: &str = "SELECT status FROM instances WHERE id = $1 FOR UPDATE";

/// Overwrites a finished instance with a new one (no lease, empty history).
pub const REPLACE: &str = "UPDATE instances SET execution_id = $2, name = $3, version = $4,
    status = $5, input = $6, output = $7, failure = $8, custom_status = $9, created_at = $10,
    last_updated_at = $11, parent = $12, lease_token = NULL, lease_owner = NULL,
    lease_expires_at = NULL, history_len = 0, dequeue_count = 0
  WHERE id = $1";

pub const DELETE_HISTORY: &str = "DELETE FROM history WHERE instance_id = $1";
pub const DELETE_MESSAGES: &str = "DELETE FROM messages WHERE instance_id = $1";

/// One message, only to an existing instance (kept from being purged until commit).
/// Returns whether it is delayed.
pub const SEND: &str = "INSERT INTO messages(instance_id, visible_at, message)
  SELECT $1, coalesce($2::timestamptz, now()), $3
  WHERE EXISTS (SELECT 1 FROM instances WHERE id = $1 FOR KEY SHARE)
  RETURNING visible_at > now()";

/// Leases up to $1 free instances with visible messages to owner $2 for $3 microseconds,
/// under tokens `$4 || id` ($4 is random per call); rows another fetch is leasing right now
/// are skipped, not waited for. The instances are those of the oldest messages, each once:
/// the oldest `4 * $1` messages are looked at, so instances with several messages waiting
/// do not shrink the batch (down to one instance when its messages were the oldest `$1`).
pub const LEASE_INSTANCES: &str = concat!(
    "WITH cand AS (
    SELECT i.id AS cid, m.visible_at AS v, m.id AS mid
    FROM messages m JOIN instances i ON i.id = m.instance_id
    WHERE m.visible_at <= now()
      AND (i.lease_expires_at IS NULL OR i.lease_expires_at <= now())
    ORDER BY m.visible_at, m.id LIMIT 4 * $1::bigint
    FOR UPDATE OF i SKIP LOCKED)
  UPDATE instances SET lease_token = $4::text || id,
    lease_owner = $2, lease_expires_at = now() + $3::bigint * interval '1 microsecond',
    dequeue_count = dequeue_count + 1
  FROM (SELECT cid FROM cand GROUP BY cid ORDER BY min(v), min(mid) LIMIT $1::bigint) c
  WHERE id = c.cid
  RETURNING lease_token, ",
    leased_cols!()
);

/// The visible messages (at most $3 each, in arrival order) of the instances that owner $1
/// leased with token prefix $2. Sent right behind [`LEASE_INSTANCES`], it runs after the
/// leases committed, on a snapshot of its own: every commit of an earlier lease holder is
/// seen, so no message it consumed is handed out again.
pub const MESSAGES_OF_LEASED: &str = "SELECT instance_id, id, message FROM (
    SELECT m.instance_id, m.id, m.message,
      row_number() OVER (PARTITION BY m.instance_id ORDER BY m.id) AS n
    FROM instances i JOIN messages m ON m.instance_id = i.id
    WHERE i.lease_owner = $1 AND left(i.lease_token, 32) = $2 AND m.visible_at <= now()) x
  WHERE n <= $3 ORDER BY instance_id, id";

/// The visible messages of instance $1, when lease $2 holds it.
pub const MESSAGES_IF_LEASED: &str = "SELECT id, message FROM messages
  WHERE instance_id = $1 AND visible_at <= now()
    AND EXISTS (SELECT 1 FROM instances WHERE id = $1 AND lease_token = $2)
  ORDER BY id LIMIT $3";

/// The instance row a commit checks its fence against, locked (not against the key share
/// locks of messages sent to it). With $4, also whether its input and output stay as the
/// commit's $2 and $3 (or are absent), so history rows referring to them stay true.
pub const FENCE: &str = "SELECT lease_token, history_len, execution_id,
    (lease_expires_at IS NULL OR lease_expires_at <= now()) AS free,
    NOT $4::boolean OR ((input IS NULL OR input IS NOT DISTINCT FROM $2::text)
      AND (output IS NULL OR output IS NOT DISTINCT FROM $3::text)) AS kept
  FROM instances WHERE id = $1 FOR NO KEY UPDATE";

/// Whether instance $1 has visible messages.
pub const HAS_VISIBLE: &str =
    "SELECT EXISTS (SELECT 1 FROM messages WHERE instance_id = $1 AND visible_at <= now())";

pub const DELETE_ACTIVITY: &str = "DELETE FROM activities WHERE id = $1 AND lease_token = $2";

/// Deletes the work items of cancelled activity calls of instance $1: executions $2 and
/// sequence numbers $3, pairwise (both are in the item's stored form).
pub const CANCEL_ACTIVITIES: &str = "DELETE FROM activities a
  USING unnest($2::text[], $3::bigint[]) AS c(e, s)
  WHERE a.instance_id = $1 AND (a.item::jsonb ->> 'execution_id') = c.e
    AND (a.item::jsonb ->> 'seq')::bigint = c.s";

pub const DELETE_CONSUMED: &str = "DELETE FROM messages WHERE instance_id = $1 AND id = ANY($2)";

/// One episode's events as one row (the `episode` encoding), at the first one's position.
pub const APPEND_HISTORY: &str =
    "INSERT INTO history(instance_id, seq, events) VALUES ($1, $2, $3)";

/// The instance's payloads and its history rows that may refer to them, for writing the
/// payloads into the rows ([`super::ops`]' `materialize`).
pub const PAYLOADS: &str = "SELECT input, output FROM instances WHERE id = $1";
pub const ENCODED_HISTORY: &str =
    "SELECT seq, events FROM history WHERE instance_id = $1 AND events IS NOT NULL";
pub const REWRITE_HISTORY_ROW: &str =
    "UPDATE history SET events = $3 WHERE instance_id = $1 AND seq = $2";

/// Writes the state an episode produced and releases the lease.
pub const WRITE_STATE: &str = "UPDATE instances SET execution_id = $2, name = $3, version = $4,
    status = $5, input = $6, output = $7, failure = $8, custom_status = $9, created_at = $10,
    last_updated_at = $11, parent = $12, lease_token = NULL, lease_owner = NULL,
    lease_expires_at = NULL, history_len = $13, dequeue_count = 0
  WHERE id = $1";

/// Releases the lease, keeping the state.
pub const RELEASE: &str = "UPDATE instances SET lease_token = NULL, lease_owner = NULL,
    lease_expires_at = NULL, history_len = $2, dequeue_count = 0 WHERE id = $1";

/// Queues activities; those with a token are leased at once to owner $4 for $5 µs.
pub const INSERT_ACTIVITIES: &str = "INSERT INTO activities(instance_id, item, lease_token,
    lease_owner, visible_at, dequeue_count)
  SELECT $1, t.item, t.tok,
    CASE WHEN t.tok IS NULL THEN NULL ELSE $4::text END,
    CASE WHEN t.tok IS NULL THEN now() ELSE now() + $5::bigint * interval '1 microsecond' END,
    CASE WHEN t.tok IS NULL THEN 0 ELSE 1 END
  FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(item, tok, o) ORDER BY t.o
  RETURNING id, lease_token";

/// Messages to existing instances (others are dropped); returns where each went and
/// whether it is delayed.
pub const INSERT_MESSAGES: &str = "INSERT INTO messages(instance_id, visible_at, message)
  SELECT t.i, coalesce(t.v, now()), t.m
  FROM unnest($1::text[], $2::timestamptz[], $3::text[]) WITH ORDINALITY AS t(i, v, m, o)
  WHERE EXISTS (SELECT 1 FROM instances x WHERE x.id = t.i FOR KEY SHARE)
  ORDER BY t.o
  RETURNING instance_id, visible_at > now()";

/// Leases instance $1 to owner $5 with token $4 for $6 µs when it is free and activity
/// $2 is still leased with token $3.
pub const LEASE_FOR_RESULT: &str = concat!(
    "UPDATE instances SET lease_token = $4, lease_owner = $5,
    lease_expires_at = now() + $6::bigint * interval '1 microsecond',
    dequeue_count = dequeue_count + 1
  WHERE id = $1 AND (lease_expires_at IS NULL OR lease_expires_at <= now())
    AND EXISTS (SELECT 1 FROM activities WHERE id = $2 AND lease_token = $3)
  RETURNING ",
    leased_cols!()
);

/// Deletes activity $1 (fenced by token $2) and queues its result for instance $3 when it
/// exists; returns (deleted, queued).
pub const COMPLETE: &str = "WITH d AS (
    DELETE FROM activities WHERE id = $1 AND lease_token = $2 RETURNING 1),
  ins AS (INSERT INTO messages(instance_id, visible_at, message)
    SELECT $3, coalesce($4::timestamptz, now()), $5
    WHERE EXISTS (SELECT 1 FROM d)
      AND EXISTS (SELECT 1 FROM instances WHERE id = $3 FOR KEY SHARE)
    RETURNING 1)
  SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM ins)";

/// [`COMPLETE`], then leases the instance to owner $7 with token $6 for $8 µs when free.
pub const COMPLETE_AND_LEASE: &str = concat!(
    "WITH d AS (
    DELETE FROM activities WHERE id = $1 AND lease_token = $2 RETURNING 1),
  ins AS (INSERT INTO messages(instance_id, visible_at, message)
    SELECT $3, coalesce($4::timestamptz, now()), $5
    WHERE EXISTS (SELECT 1 FROM d)
      AND EXISTS (SELECT 1 FROM instances WHERE id = $3 FOR KEY SHARE)
    RETURNING 1),
  l AS (UPDATE instances SET lease_token = $6, lease_owner = $7,
      lease_expires_at = now() + $8::bigint * interval '1 microsecond',
      dequeue_count = dequeue_count + 1
    WHERE id = $3 AND (lease_expires_at IS NULL OR lease_expires_at <= now())
      AND EXISTS (SELECT 1 FROM ins)
    RETURNING ",
    leased_cols!(),
    ")
  SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM ins), l.* FROM (SELECT 1) AS one
  LEFT JOIN l ON true"
);

pub const RENEW_INSTANCE: &str = "UPDATE instances
  SET lease_expires_at = now() + $3::bigint * interval '1 microsecond'
  WHERE id = $1 AND lease_token = $2";

/// Gives up a lease; with a delay the instance stays hidden (under a token no one holds).
/// The hand-out was given back, so it does not count.
pub const ABANDON_INSTANCE: &str = "UPDATE instances SET
    dequeue_count = greatest(dequeue_count - 1, 0),
    lease_token = CASE WHEN $3::bigint = 0 THEN NULL
      ELSE replace(gen_random_uuid()::text, '-', '') END,
    lease_owner = NULL,
    lease_expires_at = CASE WHEN $3::bigint = 0 THEN NULL
      ELSE now() + $3::bigint * interval '1 microsecond' END
  WHERE id = $1 AND lease_token = $2";

/// Leases up to $1 visible activity work items to owner $2 for $3 µs.
pub const LEASE_ACTIVITIES: &str = "WITH c AS (
    SELECT id AS cid FROM activities WHERE visible_at <= now()
    ORDER BY visible_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
  UPDATE activities SET lease_token = replace(gen_random_uuid()::text, '-', ''),
    lease_owner = $2, visible_at = now() + $3::bigint * interval '1 microsecond',
    dequeue_count = dequeue_count + 1
  FROM c WHERE id = c.cid
  RETURNING id, instance_id, item, lease_token, dequeue_count, heartbeat_details";

/// The queued or running activities of instance $1 (item, heartbeat_details).
pub const ACTIVITY_HEARTBEATS: &str =
    "SELECT item, heartbeat_details FROM activities WHERE instance_id = $1";

/// Extends lease $2 of activity $1 to $3 µs from now and stores heartbeat details $4.
pub const RENEW_ACTIVITY_HEARTBEAT: &str = "UPDATE activities
  SET visible_at = now() + $3::bigint * interval '1 microsecond', heartbeat_details = $4
  WHERE id = $1 AND lease_token = $2";

pub const RENEW_ACTIVITY: &str = "UPDATE activities
  SET visible_at = now() + $3::bigint * interval '1 microsecond'
  WHERE id = $1 AND lease_token = $2";

pub const ABANDON_ACTIVITY: &str = "UPDATE activities
  SET visible_at = now() + $3::bigint * interval '1 microsecond', lease_token = NULL,
    lease_owner = NULL
  WHERE id = $1 AND lease_token = $2";

/// Gives back every lease of owner $1; returns how many.
pub const RELEASE_OWNER: &str = "WITH a AS (
    UPDATE instances SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    WHERE lease_owner = $1 RETURNING 1),
  b AS (UPDATE activities SET lease_token = NULL, lease_owner = NULL, visible_at = now()
    WHERE lease_owner = $1 RETURNING 1)
  SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)";

/// Seconds until the next delayed message or instance lease comes due, if any.
pub const NEXT_DUE_ORCHESTRATIONS: &str = "SELECT extract(epoch FROM least(
    (SELECT min(visible_at) FROM messages WHERE visible_at > now()),
    (SELECT min(lease_expires_at) FROM instances WHERE lease_expires_at > now())) - now())::float8";

/// Seconds until the next delayed or leased activity work item comes due, if any.
pub const NEXT_DUE_ACTIVITIES: &str = "SELECT extract(epoch FROM
    (SELECT min(visible_at) FROM activities WHERE visible_at > now()) - now())::float8";

pub const GET_STATE: &str = concat!("SELECT ", state_cols!(), " FROM instances WHERE id = $1");

/// A history in one snapshot: first, when $2, the instance's payloads the rows may refer to
/// (`NULL, NULL, input, output`), then its rows in order (`event, events, NULL, NULL`: one
/// JSON event from before schema version 6, or an episode's encoded events).
pub const READ_HISTORY: &str = "SELECT NULL::text, NULL::bytea, input, output, -1::bigint AS k
    FROM instances WHERE id = $1 AND $2::boolean
  UNION ALL
  SELECT event, events, NULL, NULL, seq FROM history WHERE instance_id = $1
  ORDER BY k";

/// Deletes an instance with everything it has; returns 1 when it existed.
pub const PURGE: &str = "WITH i AS (DELETE FROM instances WHERE id = $1 RETURNING 1),
  h AS (DELETE FROM history WHERE instance_id = $1),
  m AS (DELETE FROM messages WHERE instance_id = $1),
  a AS (DELETE FROM activities WHERE instance_id = $1)
  SELECT count(*) FROM i";

/// The rest of one level of a purge by filter, after a CTE `i` that deletes instances
/// and returns their ids: deletes their history, messages and activities, and returns
/// `(0, id, NULL, NULL)` for each deleted instance, `(1, child, parent, NULL)` for each
/// instance still stored whose parent is one of them (through `instances_parent`), and
/// `(2, parent, event, events)` for each history row of those parents only. Every part
/// reads the snapshot from before the deletes.
macro_rules! purge_level_tail {
    () => {
        "h AS (DELETE FROM history WHERE instance_id IN (SELECT id FROM i)),
  m AS (DELETE FROM messages WHERE instance_id IN (SELECT id FROM i)),
  a AS (DELETE FROM activities WHERE instance_id IN (SELECT id FROM i)),
  c AS (SELECT x.id, x.parent::jsonb ->> 'instance_id' AS p FROM instances x
        WHERE x.parent IS NOT NULL AND (x.parent::jsonb ->> 'instance_id') IN (SELECT id FROM i)
          AND NOT EXISTS (SELECT 1 FROM i WHERE i.id = x.id))
  SELECT 0, id, NULL::text, NULL::bytea FROM i
  UNION ALL SELECT 1, id, p, NULL FROM c
  UNION ALL SELECT 2, instance_id, event, events FROM history
    WHERE instance_id IN (SELECT p FROM c)"
    };
}
pub(crate) use purge_level_tail;

/// A level of children in a purge by filter: deletes the instances `$1` whose parent is
/// still `$2` (same positions), then as `purge_level_tail!`.
pub const PURGE_CHILDREN: &str = concat!(
    "WITH i AS (DELETE FROM instances x USING unnest($1::text[], $2::text[]) AS k(id, p)
      WHERE x.id = k.id AND x.parent IS NOT NULL AND (x.parent::jsonb ->> 'instance_id') = k.p
      RETURNING x.id),
  ",
    purge_level_tail!()
);

/// One episode's commit without children to create, in one statement and one implicit
/// transaction (the `commit_episode` function of the schema): the fence, then every write.
pub const COMMIT_EPISODE: &str =
    "SELECT ok, act_ids, act_tokens, sent_to, sent_delayed, materialize
  FROM commit_episode($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
    $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)";

/// Instances with a due message and no live lease, and activities due and not leased.
pub const PENDING_WORK: &str = "SELECT
    (SELECT count(DISTINCT m.instance_id) FROM messages m JOIN instances i ON i.id = m.instance_id
     WHERE m.visible_at <= now()
       AND (i.lease_expires_at IS NULL OR i.lease_expires_at <= now())),
    (SELECT count(*) FROM activities WHERE visible_at <= now())";
