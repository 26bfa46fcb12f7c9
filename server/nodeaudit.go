package server

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/store/postgres"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Bounds of an agent's audit export.
const (
	// MaxAuditExportBatch is the most events one ExportAudit call carries.
	MaxAuditExportBatch = 1000
	maxAuditField       = 4096
	maxAuditDetails     = 32
)

// checkAgentEvent refuses an event no meshca agent writes.
func checkAgentEvent(e *nodepb.AgentAuditEvent) error {
	switch audit.Decision(e.Decision) {
	case audit.Allow, audit.Deny, audit.Info:
	default:
		return fmt.Errorf("event %d: decision %q", e.Seq, e.Decision)
	}
	if e.Action == "" {
		return fmt.Errorf("event %d: no action", e.Seq)
	}
	if len(e.Details) > maxAuditDetails {
		return fmt.Errorf("event %d: %d details, at most %d", e.Seq, len(e.Details), maxAuditDetails)
	}
	fields := []string{e.Actor, e.Action, e.Subject, e.Reason}
	for k, v := range e.Details {
		fields = append(fields, k, v)
	}
	for _, f := range fields {
		if len(f) > maxAuditField || !utf8.ValidString(f) || containsNUL(f) {
			return fmt.Errorf("event %d: a field longer than %d bytes or not UTF-8 text", e.Seq, maxAuditField)
		}
	}
	return nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// ExportAudit writes the calling agent's audit events to the history
// database, keyed by the agent's authenticated SPIFFE ID.
func (n *nodeService) ExportAudit(ctx context.Context, req *nodepb.ExportAuditRequest) (*nodepb.ExportAuditResponse, error) {
	agentID, err := n.s.requireAgent(ctx)
	if err != nil {
		return nil, err
	}
	h := n.s.cfg.History
	if h == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server has no history database")
	}
	if len(req.Events) > MaxAuditExportBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d audit events in one call; at most %d", len(req.Events), MaxAuditExportBatch)
	}
	events := make([]audit.Event, len(req.Events))
	for i, e := range req.Events {
		if err := checkAgentEvent(e); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "audit export: %v", err)
		}
		events[i] = audit.Event{Time: time.Unix(0, e.TimeUnixNano), Source: agentID, Seq: e.Seq, Actor: e.Actor, Action: e.Action,
			Subject: e.Subject, Decision: audit.Decision(e.Decision), Reason: e.Reason, Details: e.Details, Count: e.Count}
	}
	if err := n.s.ensureMigrated(ctx); err != nil {
		return nil, fmt.Errorf("history database: %w", err)
	}
	if len(events) == 0 {
		c, err := h.AuditCursor(ctx, agentID)
		if err != nil {
			return nil, fmt.Errorf("history database: %w", err)
		}
		return &nodepb.ExportAuditResponse{Cursor: c}, nil
	}
	err = h.ExportAudit(ctx, agentID, req.AfterSeq, events, nil, n.s.cfg.Clock.Now())
	var moved *postgres.CursorMovedError
	switch {
	case errors.As(err, &moved):
		return &nodepb.ExportAuditResponse{Cursor: moved.Have}, nil
	case errors.Is(err, postgres.ErrOutOfOrder):
		return nil, status.Errorf(codes.InvalidArgument, "audit export: %v", err)
	case err != nil:
		return nil, fmt.Errorf("history database: %w", err)
	}
	return &nodepb.ExportAuditResponse{Cursor: events[len(events)-1].Seq}, nil
}
