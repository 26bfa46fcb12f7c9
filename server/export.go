package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/store/postgres"
)

// History export (Config.History): the leader exports the ledger, every
// server its own audit log, to PostgreSQL, each from its cursor there,
// exactly once (see package postgres). The exporters run beside issuance
// and never hold it up: when PostgreSQL is down they fail, wait and retry,
// and the lag shows in Status; the ledger's pruning holds the records not
// exported yet, for at most Config.ExportHold past their grace.

// History export defaults.
const (
	DefaultExportBatch    = 5000
	DefaultExportInterval = time.Second
	DefaultExportHold     = 7 * 24 * time.Hour
	// maxExportBackoff bounds the wait between retries while PostgreSQL
	// is unreachable: it is back within this long of its return.
	maxExportBackoff = 5 * time.Second
	// exportCallTimeout bounds each call to PostgreSQL.
	exportCallTimeout = 30 * time.Second
	// auditRecent is how many of its newest audit events a server with
	// a history database keeps in memory for the exporter (a few seconds
	// of heavy issuance; a few MiB).
	auditRecent = 1 << 14
	// historyStartTimeout bounds the check of the database at start.
	historyStartTimeout = 5 * time.Second
)

// exportState is what the exporters know, for Status and pruning.
type exportState struct {
	mu sync.Mutex
	// migrated: the schema is known to be current.
	migrated bool
	// ledgerKnown: ledgerCursor is the cursor as this server last read or
	// moved it in PostgreSQL (it only moves forward there, so a stale value
	// is behind the true one: a safe bound for pruning).
	ledgerKnown  bool
	ledgerCursor uint64
	auditKnown   bool
	auditCursor  uint64
	// auditPos is where the audit exporter's last read of the log ended.
	auditPos audit.Position
	// lastErr is each exporter's last failure ("" after a success), by
	// exporter name ("" for the check at start).
	lastErr  map[string]string
	lastWarn time.Time
	// unexportedPruned counts records pruned before they were exported.
	unexportedPruned uint64
	// revocationsDirty: rows were exported, or the revocations may have
	// changed, since revocations were last marked; revocationsSeen is a
	// digest of the revocations then.
	revocationsDirty bool
	revocationsSeen  uint64
}

func (x *exportState) ledger() (uint64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ledgerCursor, x.ledgerKnown
}

// setLedger records the cursor; known false keeps c only as a bound (the
// cursor in PostgreSQL is at least c) until it is read again.
func (x *exportState) setLedger(c uint64, known bool) {
	x.mu.Lock()
	x.ledgerCursor, x.ledgerKnown = c, known
	x.mu.Unlock()
}

func (x *exportState) setAudit(c uint64, known bool) {
	x.mu.Lock()
	x.auditCursor, x.auditKnown = c, known
	x.mu.Unlock()
}

// historyCheck checks the database at start and migrates its schema. A
// refusal of the credentials or a schema newer than this binary knows stops
// the server; a database that does not answer is a warning: the exporters
// retry, and the lag shows.
func (s *Server) historyCheck() error {
	ctx, cancel := context.WithTimeout(context.Background(), historyStartTimeout)
	defer cancel()
	err := s.cfg.History.Migrate(ctx)
	switch {
	case err == nil:
		s.export.mu.Lock()
		s.export.migrated = true
		s.export.mu.Unlock()
		s.log.Info("history database ready", "database", s.cfg.History.String(), "schema", postgres.SchemaVersion())
		return nil
	case postgres.IsAuth(err), errors.Is(err, postgres.ErrSchemaTooNew):
		return fmt.Errorf("history database: %w", err)
	}
	s.log.Warn("history database unreachable; issuing goes on and the export will catch up when it answers",
		"database", s.cfg.History.String(), "err", err)
	s.exportFailed("", err)
	return nil
}

// ensureMigrated migrates the schema once the database answers.
func (s *Server) ensureMigrated(ctx context.Context) error {
	s.export.mu.Lock()
	done := s.export.migrated
	s.export.mu.Unlock()
	if done {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, exportCallTimeout)
	defer cancel()
	if err := s.cfg.History.Migrate(ctx); err != nil {
		return err
	}
	s.export.mu.Lock()
	s.export.migrated = true
	delete(s.export.lastErr, "") // the failure of the check at start
	s.export.mu.Unlock()
	s.log.Info("history database ready", "database", s.cfg.History.String(), "schema", postgres.SchemaVersion())
	return nil
}

// exportFailed records an export failure, logging at most one warning a
// minute (a database down for days must not flood the log).
func (s *Server) exportFailed(name string, err error) {
	x := &s.export
	x.mu.Lock()
	if x.lastErr == nil {
		x.lastErr = map[string]string{}
	}
	x.lastErr[name] = err.Error()
	now := s.cfg.Clock.Now()
	warn := now.Sub(x.lastWarn) >= time.Minute || now.Before(x.lastWarn)
	if warn {
		x.lastWarn = now
	}
	x.mu.Unlock()
	if warn {
		s.log.Warn("history export failing; retrying", "exporter", name, "database", s.cfg.History.String(), "err", err)
	}
}

func (s *Server) exportSucceeded(name string) {
	s.export.mu.Lock()
	delete(s.export.lastErr, name)
	s.export.mu.Unlock()
}

// lastErrors joins the exporters' last failures, in name order.
func (x *exportState) lastErrors() string {
	names := make([]string, 0, len(x.lastErr))
	for n := range x.lastErr {
		names = append(names, n)
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		if n == "" {
			parts = append(parts, x.lastErr[n])
		} else {
			parts = append(parts, n+": "+x.lastErr[n])
		}
	}
	return strings.Join(parts, "; ")
}

// exportLoop runs one exporter: step exports a batch and reports whether
// more is waiting. Between batches it waits ExportInterval; after a
// failure, a backoff up to maxExportBackoff.
func (s *Server) exportLoop(ctx context.Context, name string, step func(context.Context) (more bool, err error)) error {
	backoff := s.cfg.ExportInterval
	for {
		wait := s.cfg.ExportInterval
		more, err := step(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			s.exportFailed(name, err)
			backoff = min(2*backoff, maxExportBackoff)
			wait = backoff
		default:
			s.exportSucceeded(name)
			backoff = s.cfg.ExportInterval
			if more {
				wait = 0
			}
		}
		if wait > 0 && alarm.Sleep(ctx, s.cfg.Clock, wait) != nil {
			return nil
		}
	}
}

// exportLedgerStep exports, on the leader, the next batch of ledger blocks
// after the cursor. Another exporter (a former leader not yet aware) may
// move the cursor: the export then writes nothing and goes on from there.
func (s *Server) exportLedgerStep(ctx context.Context) (bool, error) {
	if !s.node.IsLeader() {
		s.export.setLedger(0, false)
		s.export.mu.Lock()
		s.export.revocationsDirty = true // a new leadership marks them again
		s.export.mu.Unlock()
		return false, nil
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, exportCallTimeout)
	defer cancel()
	cursor, known := s.export.ledger()
	if !known {
		c, _, err := s.cfg.History.LedgerCursor(ctx)
		if err != nil {
			return false, err
		}
		cursor = c
		s.export.setLedger(c, true)
	}
	r := s.fsm.Read()
	if cursor > r.AppliedIndex() {
		return false, fmt.Errorf("the database's ledger cursor (%d) is past this cluster's Raft log (%d): is it another cluster's database?", cursor, r.AppliedIndex())
	}
	blocks := r.LedgerBlocksAfter(cursor, s.cfg.ExportBatch)
	if len(blocks) == 0 {
		return false, s.markRevoked(ctx, r)
	}
	_, err := s.cfg.History.ExportLedger(ctx, cursor, blocks, s.cfg.Clock.Now())
	var moved *postgres.CursorMovedError
	switch {
	case errors.As(err, &moved):
		s.export.setLedger(moved.Have, true)
		return true, nil
	case err != nil:
		// The commit may have happened: read the cursor again.
		s.export.setLedger(cursor, false)
		return false, err
	}
	s.export.setLedger(blocks[len(blocks)-1].Index, true)
	s.export.mu.Lock()
	s.export.revocationsDirty = true
	s.export.mu.Unlock()
	return true, nil
}

// markRevoked, once the export has caught up, marks the revocations in the
// replicated state on the exported certificates, when rows were exported
// or the revocations changed since it last did (and once per leadership).
func (s *Server) markRevoked(ctx context.Context, r *raftfsm.Reader) error {
	revs := r.Revocations()
	h := fnv.New64a()
	for _, rv := range revs {
		h.Write([]byte(rv.IssuerId))
		h.Write([]byte{0})
		h.Write(rv.Serial)
		h.Write([]byte{0})
	}
	digest := h.Sum64()
	s.export.mu.Lock()
	due := s.export.revocationsDirty || digest != s.export.revocationsSeen
	s.export.mu.Unlock()
	if !due || len(revs) == 0 {
		return nil
	}
	out := make([]postgres.Revocation, len(revs))
	for i, rv := range revs {
		out[i] = postgres.Revocation{IssuerID: rv.IssuerId, Serial: rv.Serial, RevokedAt: time.Unix(0, rv.RevokedUnixNano), Reason: rv.Reason}
	}
	if _, err := s.cfg.History.MarkRevoked(ctx, out); err != nil {
		return err
	}
	s.export.mu.Lock()
	s.export.revocationsDirty, s.export.revocationsSeen = false, digest
	s.export.mu.Unlock()
	return nil
}

// exportAuditStep exports the next batch of this server's audit events
// after its cursor. Only events known durable are exported (the log is
// synced first): an event lost in a crash would otherwise be exported and
// its sequence number reused by the next.
func (s *Server) exportAuditStep(ctx context.Context) (bool, error) {
	if err := s.ensureMigrated(ctx); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, exportCallTimeout)
	defer cancel()
	x := &s.export
	x.mu.Lock()
	cursor, known := x.auditCursor, x.auditKnown
	x.mu.Unlock()
	if !known {
		c, err := s.cfg.History.AuditCursor(ctx, s.cfg.NodeID)
		if err != nil {
			return false, err
		}
		cursor = c
		s.export.setAudit(c, true)
	}
	last := s.auditLog.LastSeq()
	if last <= cursor {
		return false, nil
	}
	if err := s.auditLog.Sync(ctx); err != nil {
		return false, fmt.Errorf("audit log: %w", err)
	}
	// The newest events come from memory while the export keeps up; the
	// segments are read (and decoded) only when it lags further.
	batch, ok := s.auditLog.Recent(cursor+1, int(min(uint64(s.cfg.ExportBatch), last-cursor)), nil)
	if !ok {
		var err error
		if batch, err = s.tailAudit(cursor, last); err != nil {
			return false, err
		}
	}
	if len(batch) == 0 {
		return false, nil
	}
	if batch[0].Seq != cursor+1 {
		// The log dropped its oldest segments before they were exported.
		s.log.Error("audit events lost before export: the audit log's oldest segments were deleted while the database was unreachable",
			"from_seq", cursor+1, "to_seq", batch[0].Seq-1)
	}
	err := s.cfg.History.ExportAudit(ctx, s.cfg.NodeID, cursor, batch, s.isOperatorEvent, s.cfg.Clock.Now())
	var moved *postgres.CursorMovedError
	switch {
	case errors.As(err, &moved):
		s.export.setAudit(moved.Have, true)
		return true, nil
	case err != nil:
		s.export.setAudit(cursor, false)
		return false, err
	}
	s.export.setAudit(batch[len(batch)-1].Seq, true)
	return len(batch) == s.cfg.ExportBatch, nil
}

// tailAudit reads the audit events after cursor, up to last and at most
// ExportBatch of them, from the segments; Tail resumes where the last read
// ended instead of reading the segment again from its start.
func (s *Server) tailAudit(cursor, last uint64) ([]audit.Event, error) {
	x := &s.export
	var batch []audit.Event
	x.mu.Lock()
	pos := x.auditPos
	x.mu.Unlock()
	pos, err := audit.Tail(auditDir(s.cfg.DataDir), pos, cursor+1, func(e audit.Event) error {
		if e.Seq > last || len(batch) >= s.cfg.ExportBatch {
			return audit.ErrStop
		}
		batch = append(batch, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	x.mu.Lock()
	x.auditPos = pos
	x.mu.Unlock()
	return batch, nil
}

// isOperatorEvent tells the audit events of operators' commands: those of
// the admin socket and of the cluster's admins (as they are when the event
// is exported), and refusals of operator calls.
func (s *Server) isOperatorEvent(e audit.Event) bool {
	return e.Actor == operatorNodeID || e.Action == "operator.call" || strings.HasPrefix(e.Actor, "spiffe://") && s.isAdmin(e.Actor)
}

// pruneHold fills in how a PruneLedger holds the records not yet exported,
// and reports (logs, audits and counts) those the hold's bound drops.
func (s *Server) pruneHold(cutoff int64, now time.Time) (hold bool, exported uint64, bound int64) {
	if s.cfg.History == nil {
		return false, 0, 0
	}
	exported, _ = s.export.ledger() // unknown: 0, everything is held
	bound = min(cutoff, now.Add(-s.cfg.LedgerGrace-s.cfg.ExportHold).Unix())
	if n := s.fsm.Read().LedgerExpiredAfter(exported, bound); n > 0 {
		s.export.mu.Lock()
		s.export.unexportedPruned += uint64(n)
		s.export.mu.Unlock()
		s.log.Error("pruning ledger records PostgreSQL has not taken: the export has lagged past the hold",
			"records", n, "hold", s.cfg.ExportHold, "exported_index", exported)
		s.events.Record(audit.Event{Action: "ledger.prune_unexported", Decision: audit.Info,
			Reason: "history export lagged past the hold", Details: map[string]string{
				"records": strconv.Itoa(n), "exported_index": strconv.FormatUint(exported, 10), "hold": s.cfg.ExportHold.String()}})
	}
	return true, exported, bound
}

// pruneHistory deletes, on the leader, the rows older than the retention.
func (s *Server) pruneHistory(ctx context.Context, now time.Time) {
	if s.cfg.History == nil || s.cfg.HistoryRetention == 0 {
		return
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, exportCallTimeout)
	defer cancel()
	before := now.Add(-s.cfg.HistoryRetention)
	certs, events, err := s.cfg.History.Prune(ctx, before, before, s.cfg.ExportBatch)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Warn("history retention failed; retrying next interval", "err", err)
	case certs+events > 0:
		s.log.Info("history pruned", "certificates", certs, "audit_events", events, "before", before.UTC())
	}
}

// historyStatus reports the export's lag as this server sees it.
func (s *Server) historyStatus(ctx context.Context) *operatorpb.HistoryExport {
	if s.cfg.History == nil {
		return &operatorpb.HistoryExport{}
	}
	now := s.cfg.Clock.Now()
	h := &operatorpb.HistoryExport{Enabled: true, Database: s.cfg.History.String(), LedgerExporter: s.node.IsLeader()}
	cursor, known := s.export.ledger()
	if !known || !h.LedgerExporter {
		// Followers (and a leader not exported yet) ask the database.
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		if c, _, err := s.cfg.History.LedgerCursor(qctx); err == nil {
			cursor = c
		}
		cancel()
	}
	h.LedgerCursor = cursor
	n, oldest := s.fsm.Read().LedgerAfter(cursor)
	h.LedgerLagRecords = uint64(n)
	if n > 0 {
		h.LedgerLagSeconds = max(0, now.Sub(time.Unix(oldest, 0).Add(ca.Backdate)).Seconds())
	}
	s.export.mu.Lock()
	h.AuditCursor, h.LastError, h.UnexportedPruned = s.export.auditCursor, s.export.lastErrors(), s.export.unexportedPruned
	pos := s.export.auditPos
	s.export.mu.Unlock()
	if s.auditLog != nil {
		if last := s.auditLog.LastSeq(); last > h.AuditCursor {
			h.AuditLagEvents = last - h.AuditCursor
			// The oldest event not exported: in memory, else read from
			// the exporter's position.
			if evs, ok := s.auditLog.Recent(h.AuditCursor+1, 1, nil); ok && len(evs) > 0 {
				h.AuditLagSeconds = max(0, now.Sub(evs[0].Time).Seconds())
			} else {
				_, _ = audit.Tail(auditDir(s.cfg.DataDir), pos, h.AuditCursor+1, func(e audit.Event) error {
					h.AuditLagSeconds = max(0, now.Sub(e.Time).Seconds())
					return audit.ErrStop
				})
			}
		}
	}
	return h
}
