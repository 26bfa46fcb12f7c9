package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/raftpb"
)

// CursorMovedError means an export found its cursor elsewhere than where
// the exporter read it: another exporter (a former leader that did not know
// yet) moved it. Nothing was written; re-read the cursor and go on from
// there.
type CursorMovedError struct {
	Cursor string // "ledger" or "audit <server>"
	Want   uint64 // where the exporter thought it was
	Have   uint64 // where it is
}

func (e *CursorMovedError) Error() string {
	return fmt.Sprintf("postgres: %s cursor is at %d, not %d: another exporter moved it", e.Cursor, e.Have, e.Want)
}

// ErrOutOfOrder means an export was handed rows that do not follow its
// cursor in order. Nothing was written.
var ErrOutOfOrder = errors.New("postgres: export rows out of order")

// LedgerCursor returns the Raft index of the last ledger block exported (0:
// none) and when it was exported.
func (s *Store) LedgerCursor(ctx context.Context) (uint64, time.Time, error) {
	var idx int64
	var at *time.Time
	if err := s.pool.QueryRow(ctx, "SELECT raft_index, exported_at FROM ledger_export WHERE id = 1").Scan(&idx, &at); err != nil {
		return 0, time.Time{}, s.classify(err)
	}
	if at == nil {
		return uint64(idx), time.Time{}, nil
	}
	return uint64(idx), *at, nil
}

var certColumns = []string{"raft_index", "position", "serial", "spiffe_id", "node_id", "profile", "issuer_id", "not_before", "not_after"}

// ExportLedger writes the records of blocks, which follow the cursor
// (after) in increasing Raft index order, with COPY, and moves the cursor
// to the last block, in one transaction. If the cursor is not at after it
// writes nothing and returns a *CursorMovedError. now stamps the cursor.
// It returns the number of records written.
func (s *Store) ExportLedger(ctx context.Context, after uint64, blocks []*raftpb.LedgerBlock, now time.Time) (int, error) {
	if len(blocks) == 0 {
		return 0, nil
	}
	prev := after
	n := 0
	for _, b := range blocks {
		if b.Index <= prev {
			return 0, fmt.Errorf("%w: ledger block %d after %d", ErrOutOfOrder, b.Index, prev)
		}
		prev = b.Index
		n += len(b.Records)
	}
	last := prev
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var have int64
		if err := tx.QueryRow(ctx, "SELECT raft_index FROM ledger_export WHERE id = 1 FOR UPDATE").Scan(&have); err != nil {
			return err
		}
		if uint64(have) != after {
			return &CursorMovedError{Cursor: "ledger", Want: after, Have: uint64(have)}
		}
		rows := make([][]any, 0, n)
		for _, b := range blocks {
			for i, r := range b.Records {
				rows = append(rows, []any{int64(b.Index), int32(i), r.Serial, r.SpiffeId, r.NodeId, r.Profile, r.IssuerId,
					time.Unix(r.NotBeforeUnix, 0).UTC(), time.Unix(r.NotAfterUnix, 0).UTC()})
			}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"certificates"}, certColumns, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy certificates: %w", err)
		}
		_, err := tx.Exec(ctx, "UPDATE ledger_export SET raft_index = $1, exported_at = $2 WHERE id = 1", int64(last), now.UTC())
		return err
	})
	if err != nil {
		var cm *CursorMovedError
		if errors.As(err, &cm) {
			return 0, cm
		}
		return 0, s.classify(err)
	}
	return n, nil
}

// AuditCursor returns the sequence number of server's last audit event
// exported (0: none).
func (s *Store) AuditCursor(ctx context.Context, server string) (uint64, error) {
	var seq int64
	err := s.pool.QueryRow(ctx, "SELECT seq FROM audit_export WHERE server = $1", server).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.classify(err)
	}
	return uint64(seq), nil
}

var auditColumns = []string{"server", "seq", "time", "actor", "action", "subject", "decision", "reason", "details", "count", "operator"}

// ExportAudit writes server's events, which follow its cursor (after) in
// increasing sequence order, with COPY, and moves the cursor to the last,
// in one transaction; see ExportLedger. operator marks the events of
// operators' commands (nil: none).
func (s *Store) ExportAudit(ctx context.Context, server string, after uint64, events []audit.Event, operator func(audit.Event) bool, now time.Time) error {
	if len(events) == 0 {
		return nil
	}
	prev := after
	for _, e := range events {
		if e.Seq <= prev {
			return fmt.Errorf("%w: audit event %d after %d", ErrOutOfOrder, e.Seq, prev)
		}
		prev = e.Seq
	}
	last := prev
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO audit_export (server, seq) VALUES ($1, 0) ON CONFLICT DO NOTHING", server); err != nil {
			return err
		}
		var have int64
		if err := tx.QueryRow(ctx, "SELECT seq FROM audit_export WHERE server = $1 FOR UPDATE", server).Scan(&have); err != nil {
			return err
		}
		if uint64(have) != after {
			return &CursorMovedError{Cursor: "audit " + server, Want: after, Have: uint64(have)}
		}
		rows := make([][]any, len(events))
		for i, e := range events {
			var details any
			if len(e.Details) > 0 {
				details = e.Details
			}
			count := int64(e.Count)
			if count == 0 {
				count = 1
			}
			rows[i] = []any{server, int64(e.Seq), e.Time.UTC(), e.Actor, e.Action, e.Subject, string(e.Decision), e.Reason, details, count,
				operator != nil && operator(e)}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"audit_events"}, auditColumns, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy audit events: %w", err)
		}
		_, err := tx.Exec(ctx, "UPDATE audit_export SET seq = $2, exported_at = $3 WHERE server = $1", server, int64(last), now.UTC())
		return err
	})
	if err != nil {
		var cm *CursorMovedError
		if errors.As(err, &cm) {
			return cm
		}
		return s.classify(err)
	}
	return nil
}

// Revocation is a revoked certificate, by its issuer and serial.
type Revocation struct {
	IssuerID  string
	Serial    []byte
	RevokedAt time.Time
	Reason    int32
}

// MarkRevoked records revocations on the exported certificates they name
// that are not marked yet, and returns how many rows it changed. It is
// idempotent: the exporter repeats it when it exports new rows or the
// revocations change (a revocation may precede its certificate's export).
func (s *Store) MarkRevoked(ctx context.Context, revs []Revocation) (int64, error) {
	if len(revs) == 0 {
		return 0, nil
	}
	issuers := make([]string, len(revs))
	serials := make([][]byte, len(revs))
	at := make([]time.Time, len(revs))
	reasons := make([]int32, len(revs))
	for i, r := range revs {
		issuers[i], serials[i], at[i], reasons[i] = r.IssuerID, r.Serial, r.RevokedAt.UTC(), r.Reason
	}
	tag, err := s.pool.Exec(ctx, `UPDATE certificates c SET revoked_at = v.at, revocation_reason = v.reason
		FROM unnest($1::text[], $2::bytea[], $3::timestamptz[], $4::int[]) AS v(issuer, serial, at, reason)
		WHERE c.serial = v.serial AND c.issuer_id = v.issuer AND c.revoked_at IS NULL`, issuers, serials, at, reasons)
	if err != nil {
		return 0, s.classify(err)
	}
	return tag.RowsAffected(), nil
}
