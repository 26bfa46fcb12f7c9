package agent

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/proto/nodepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Audit export (issue 15): while a session runs, the agent ships its own
// audit log (Workload API and SDS decisions) to the server, which writes it
// to the cluster's history database, exactly once: the cursor lives there,
// and each call carries the events after it. Only events synced to disk
// are shipped, so that a crash cannot lose an event already exported and
// reuse its sequence number. Shipping never ends a session: failures wait
// and retry, and a server without a history database is asked again
// rarely.
const (
	auditExportInterval = 2 * time.Second
	auditExportBatch    = 500
	// auditExportIdle is how long the agent waits before asking again a
	// server that has no history database.
	auditExportIdle = 5 * time.Minute
	auditExportMax  = 30 * time.Second
)

// shipAudit runs for one session; it returns when ctx ends.
func (a *Agent) shipAudit(ctx context.Context, client nodepb.NodeClient) {
	if a.auditLog == nil {
		return
	}
	var cursor uint64
	var pos audit.Position // where the last read of the log ended
	known := false
	backoff := auditExportInterval
	for {
		wait := auditExportInterval
		more, err := a.shipAuditOnce(ctx, client, &cursor, &pos, &known)
		switch {
		case ctx.Err() != nil:
			return
		case status.Code(err) == codes.FailedPrecondition:
			wait = auditExportIdle
		case err != nil:
			known = false
			backoff = min(2*backoff, auditExportMax)
			wait = backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
			a.log.Debug("audit export failed; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
		default:
			backoff = auditExportInterval
			if more {
				wait = 0
			}
		}
		if wait > 0 && alarm.Sleep(ctx, a.cfg.Clock, wait) != nil {
			return
		}
	}
}

func (a *Agent) shipAuditOnce(ctx context.Context, client nodepb.NodeClient, cursor *uint64, pos *audit.Position, known *bool) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if !*known {
		resp, err := client.ExportAudit(ctx, &nodepb.ExportAuditRequest{})
		if err != nil {
			return false, err
		}
		*cursor, *known = resp.Cursor, true
	}
	last := a.auditLog.LastSeq()
	if last <= *cursor {
		return false, nil
	}
	if err := a.auditLog.Sync(ctx); err != nil {
		return false, err
	}
	req := &nodepb.ExportAuditRequest{AfterSeq: *cursor}
	p, err := audit.Tail(filepath.Join(a.id.dir, "audit"), *pos, *cursor+1, func(e audit.Event) error {
		if e.Seq > last || len(req.Events) >= auditExportBatch {
			return audit.ErrStop
		}
		req.Events = append(req.Events, &nodepb.AgentAuditEvent{Seq: e.Seq, TimeUnixNano: e.Time.UnixNano(), Actor: e.Actor, Action: e.Action,
			Subject: e.Subject, Decision: string(e.Decision), Reason: e.Reason, Details: e.Details, Count: e.Count})
		return nil
	})
	if err != nil {
		return false, err
	}
	*pos = p
	if len(req.Events) == 0 {
		return false, nil
	}
	resp, err := client.ExportAudit(ctx, req)
	if err != nil {
		*known = false // the call may have been carried out
		return false, err
	}
	*cursor = resp.Cursor
	return *cursor < last, nil
}
