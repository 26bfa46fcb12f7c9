-- meshca history, schema version 1: every issued certificate (exported
-- from the Raft ledger), every audit event of every server, and the export
-- cursors, which are updated in the same transaction as the rows.

CREATE TABLE certificates (
    raft_index        bigint      NOT NULL, -- the Raft log entry that committed the record
    position          integer     NOT NULL, -- its place in that entry
    serial            bytea       NOT NULL,
    spiffe_id         text        NOT NULL,
    node_id           text        NOT NULL DEFAULT '',
    profile           text        NOT NULL,
    issuer_id         text        NOT NULL,
    not_before        timestamptz NOT NULL,
    not_after         timestamptz NOT NULL,
    revoked_at        timestamptz,
    revocation_reason integer,
    PRIMARY KEY (raft_index, position)
);
-- Single-column btrees: PostgreSQL deduplicates their repeated keys (one
-- SPIFFE ID, one node, many certificates), which keeps COPY fast; a
-- composite (spiffe_id, not_before) index cannot be deduplicated and
-- halves the export's throughput.
CREATE INDEX certificates_serial ON certificates (serial);
CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);
CREATE INDEX certificates_node_id ON certificates (node_id);
-- Rows arrive in time order, so block-range (BRIN) indexes serve the time
-- bounds of listings and retention's deletes at almost no cost to the
-- export (a btree per column would be rewritten on every COPY).
CREATE INDEX certificates_not_before ON certificates USING brin (not_before);
CREATE INDEX certificates_not_after ON certificates USING brin (not_after);
CREATE INDEX certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- ledger_export is the cluster's one ledger cursor: the Raft index of the
-- last ledger block exported.
CREATE TABLE ledger_export (
    id          integer     PRIMARY KEY CHECK (id = 1),
    raft_index  bigint      NOT NULL,
    exported_at timestamptz
);
INSERT INTO ledger_export (id, raft_index) VALUES (1, 0);

CREATE TABLE audit_events (
    server   text        NOT NULL, -- the recording server's node ID
    seq      bigint      NOT NULL, -- its gap-free sequence number
    time     timestamptz NOT NULL,
    actor    text        NOT NULL DEFAULT '',
    action   text        NOT NULL,
    subject  text        NOT NULL DEFAULT '',
    decision text        NOT NULL,
    reason   text        NOT NULL DEFAULT '',
    details  jsonb,
    count    bigint      NOT NULL DEFAULT 1,
    operator boolean     NOT NULL DEFAULT false, -- an operator's command (admin socket or admin ID)
    PRIMARY KEY (server, seq)
);
-- retention deletes by time, oldest first, in batches; listing pages by time
CREATE INDEX audit_events_time ON audit_events (time, server, seq);
CREATE INDEX audit_events_actor ON audit_events (actor, time);
CREATE INDEX audit_events_action ON audit_events (action, time);
CREATE INDEX audit_events_decision ON audit_events (decision, time);

-- operator_actions are the audit events of operators' commands.
CREATE VIEW operator_actions AS
    SELECT server, seq, time, actor, action, subject, decision, reason, details
    FROM audit_events WHERE operator;

-- audit_export holds each server's cursor: the sequence number of its last
-- audit event exported.
CREATE TABLE audit_export (
    server      text        PRIMARY KEY,
    seq         bigint      NOT NULL,
    exported_at timestamptz
);
CREATE INDEX audit_events_operator ON audit_events (time) WHERE operator;
