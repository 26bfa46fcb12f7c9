package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrBadPageToken means a page token is not one a list returned.
var ErrBadPageToken error = badInput("postgres: malformed page token")

type badInput string

func (e badInput) Error() string { return string(e) }

// InvalidArgument marks the error as a refusal of the request (see
// internal/rpcerr).
func (badInput) InvalidArgument() bool { return true }

// MaxPageSize bounds a page of a list.
const MaxPageSize = 10000

// Certificate is one issued certificate.
type Certificate struct {
	RaftIndex        uint64     `json:"raft_index"`
	Position         int        `json:"position"`
	Serial           []byte     `json:"serial"`
	SPIFFEID         string     `json:"spiffe_id"`
	NodeID           string     `json:"node_id,omitempty"`
	Profile          string     `json:"profile"`
	IssuerID         string     `json:"issuer_id"`
	NotBefore        time.Time  `json:"not_before"`
	NotAfter         time.Time  `json:"not_after"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevocationReason *int32     `json:"revocation_reason,omitempty"`
}

// CertFilter selects certificates. Zero fields select everything.
type CertFilter struct {
	// Since and Until bound the issuance time (not-before): Since <= t < Until.
	Since, Until time.Time
	SPIFFEID     string
	NodeID       string
	// Revoked selects revoked certificates only.
	Revoked bool
	// Limit is the page size (default 100, at most MaxPageSize).
	Limit int
	// PageToken continues a listing where the previous page ended.
	PageToken string
}

func pageSize(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}

// ParseCertPageToken decodes a certificate page token: "raftindex.position".
func ParseCertPageToken(tok string) (index uint64, pos int, err error) {
	a, b, ok := strings.Cut(tok, ".")
	if !ok {
		return 0, 0, fmt.Errorf("%w: %q", ErrBadPageToken, tok)
	}
	index, err1 := strconv.ParseUint(a, 10, 63)
	p, err2 := strconv.ParseInt(b, 10, 32)
	if err1 != nil || err2 != nil || p < 0 {
		return 0, 0, fmt.Errorf("%w: %q", ErrBadPageToken, tok)
	}
	return index, int(p), nil
}

// ListCertificates returns a page of the certificates f selects, in
// issuance (Raft) order, and the token of the next page ("" at the end).
func (s *Store) ListCertificates(ctx context.Context, f CertFilter) ([]Certificate, string, error) {
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return "$" + strconv.Itoa(len(args)) }
	if f.PageToken != "" {
		idx, pos, err := ParseCertPageToken(f.PageToken)
		if err != nil {
			return nil, "", err
		}
		where = append(where, fmt.Sprintf("(raft_index, position) > (%s, %s)", arg(int64(idx)), arg(int32(pos))))
	}
	if !f.Since.IsZero() {
		where = append(where, "not_before >= "+arg(f.Since.UTC()))
	}
	if !f.Until.IsZero() {
		where = append(where, "not_before < "+arg(f.Until.UTC()))
	}
	if f.SPIFFEID != "" {
		where = append(where, "spiffe_id = "+arg(f.SPIFFEID))
	}
	if f.NodeID != "" {
		where = append(where, "node_id = "+arg(f.NodeID))
	}
	if f.Revoked {
		where = append(where, "revoked_at IS NOT NULL")
	}
	limit := pageSize(f.Limit)
	q := "SELECT raft_index, position, serial, spiffe_id, node_id, profile, issuer_id, not_before, not_after, revoked_at, revocation_reason FROM certificates"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY raft_index, position LIMIT " + arg(limit+1)
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", s.classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Certificate, error) {
		var c Certificate
		var idx int64
		var pos int32
		err := r.Scan(&idx, &pos, &c.Serial, &c.SPIFFEID, &c.NodeID, &c.Profile, &c.IssuerID, &c.NotBefore, &c.NotAfter, &c.RevokedAt, &c.RevocationReason)
		c.RaftIndex, c.Position = uint64(idx), int(pos)
		c.NotBefore, c.NotAfter = c.NotBefore.UTC(), c.NotAfter.UTC()
		return c, err
	})
	if err != nil {
		return nil, "", s.classify(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = fmt.Sprintf("%d.%d", last.RaftIndex, last.Position)
	}
	return out, next, nil
}

// CountCertificates counts every exported certificate.
func (s *Store) CountCertificates(ctx context.Context) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM certificates").Scan(&n)
	return n, s.classify(err)
}

// Event is one exported audit event.
type Event struct {
	Server   string            `json:"server"`
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Actor    string            `json:"actor,omitempty"`
	Action   string            `json:"action"`
	Subject  string            `json:"subject,omitempty"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason,omitempty"`
	Details  map[string]string `json:"details,omitempty"`
	Count    uint64            `json:"count"`
	Operator bool              `json:"operator,omitempty"`
}

// AuditFilter selects audit events. Zero fields select everything.
type AuditFilter struct {
	Actor, Action, Decision string
	// Since and Until bound the event time: Since <= t < Until.
	Since, Until time.Time
	// Operator selects operators' commands only.
	Operator bool
	// Limit is the page size (default 100, at most MaxPageSize).
	Limit     int
	PageToken string
}

// ParseAuditPageToken decodes an audit page token:
// "unixnano.seq.server" (the server last: node IDs may hold dots).
func ParseAuditPageToken(tok string) (t time.Time, seq uint64, server string, err error) {
	parts := strings.SplitN(tok, ".", 3)
	if len(parts) != 3 || parts[2] == "" {
		return time.Time{}, 0, "", fmt.Errorf("%w: %q", ErrBadPageToken, tok)
	}
	ns, err1 := strconv.ParseInt(parts[0], 10, 64)
	seq, err2 := strconv.ParseUint(parts[1], 10, 63)
	if err1 != nil || err2 != nil {
		return time.Time{}, 0, "", fmt.Errorf("%w: %q", ErrBadPageToken, tok)
	}
	return time.Unix(0, ns).UTC(), seq, parts[2], nil
}

// ListAudit returns a page of the events f selects, oldest first, and the
// token of the next page ("" at the end).
func (s *Store) ListAudit(ctx context.Context, f AuditFilter) ([]Event, string, error) {
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return "$" + strconv.Itoa(len(args)) }
	if f.PageToken != "" {
		t, seq, server, err := ParseAuditPageToken(f.PageToken)
		if err != nil {
			return nil, "", err
		}
		where = append(where, fmt.Sprintf("(time, server, seq) > (%s, %s, %s)", arg(t), arg(server), arg(int64(seq))))
	}
	for col, v := range map[string]string{"actor": f.Actor, "action": f.Action, "decision": f.Decision} {
		if v != "" {
			where = append(where, col+" = "+arg(v))
		}
	}
	if !f.Since.IsZero() {
		where = append(where, "time >= "+arg(f.Since.UTC()))
	}
	if !f.Until.IsZero() {
		where = append(where, "time < "+arg(f.Until.UTC()))
	}
	if f.Operator {
		where = append(where, "operator")
	}
	limit := pageSize(f.Limit)
	q := "SELECT server, seq, time, actor, action, subject, decision, reason, details, count, operator FROM audit_events"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time, server, seq LIMIT " + arg(limit+1)
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", s.classify(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		var seq, count int64
		var details []byte
		if err := r.Scan(&e.Server, &seq, &e.Time, &e.Actor, &e.Action, &e.Subject, &e.Decision, &e.Reason, &details, &count, &e.Operator); err != nil {
			return e, err
		}
		e.Seq, e.Count, e.Time = uint64(seq), uint64(count), e.Time.UTC()
		if len(details) > 0 {
			if err := json.Unmarshal(details, &e.Details); err != nil {
				return e, fmt.Errorf("details of %s/%d: %w", e.Server, e.Seq, err)
			}
		}
		return e, nil
	})
	if err != nil {
		return nil, "", s.classify(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = fmt.Sprintf("%d.%d.%s", last.Time.UnixNano(), last.Seq, last.Server)
	}
	return out, next, nil
}

// Prune deletes, in batches of batch rows (each its own short
// transaction, so that exports and queries are not held up), certificates
// that expired before certsBefore and audit events older than
// eventsBefore (a zero time keeps them all). It returns how many rows of
// each it deleted.
func (s *Store) Prune(ctx context.Context, certsBefore, eventsBefore time.Time, batch int) (certs, events int64, err error) {
	if batch <= 0 {
		batch = 10000
	}
	del := func(q string, before time.Time) (int64, error) {
		var total int64
		for {
			tag, err := s.pool.Exec(ctx, q, before.UTC(), batch)
			if err != nil {
				return total, s.classify(err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < int64(batch) {
				return total, nil
			}
		}
	}
	if !certsBefore.IsZero() {
		// Any expired rows, batch by batch (found through the BRIN index
		// on not_after), not the oldest first: all of them go.
		if certs, err = del(`DELETE FROM certificates WHERE ctid IN
			(SELECT ctid FROM certificates WHERE not_after < $1 LIMIT $2)`, certsBefore); err != nil {
			return certs, 0, err
		}
	}
	if !eventsBefore.IsZero() {
		events, err = del(`DELETE FROM audit_events WHERE (server, seq) IN
			(SELECT server, seq FROM audit_events WHERE time < $1 ORDER BY time LIMIT $2)`, eventsBefore)
	}
	return certs, events, err
}
