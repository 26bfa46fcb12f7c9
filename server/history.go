package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/store/postgres"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// History sources a query answers from.
const (
	SourcePostgres = "postgres"
	SourceRaft     = "raft"
	SourceLocal    = "local"
)

func unixOrZero(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

func unixNanoOrZero(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func pageSize(n int32) (int, error) {
	switch {
	case n < 0 || n > postgres.MaxPageSize:
		return 0, status.Errorf(codes.InvalidArgument, "page size %d: want 0 (default 100) to %d", n, postgres.MaxPageSize)
	case n == 0:
		return 100, nil
	}
	return int(n), nil
}

// QueryCertificates lists issued certificates: from PostgreSQL when the
// server has one (every certificate ever exported), from the Raft ledger
// otherwise or when asked (the hot window: certificates not yet pruned).
func (o *operatorService) QueryCertificates(ctx context.Context, req *operatorpb.QueryCertificatesRequest) (*operatorpb.QueryCertificatesResponse, error) {
	limit, err := pageSize(req.PageSize)
	if err != nil {
		return nil, err
	}
	f := postgres.CertFilter{Since: unixOrZero(req.SinceUnix), Until: unixOrZero(req.UntilUnix), SPIFFEID: req.SpiffeId,
		NodeID: req.NodeId, Revoked: req.Revoked, Limit: limit, PageToken: req.PageToken}
	if o.s.cfg.History != nil && !req.HotWindow {
		certs, next, err := o.s.cfg.History.ListCertificates(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		resp := &operatorpb.QueryCertificatesResponse{NextPageToken: next, Source: SourcePostgres}
		for _, c := range certs {
			hc := &operatorpb.HistoryCertificate{Serial: c.Serial, SpiffeId: c.SPIFFEID, NodeId: c.NodeID, Profile: c.Profile,
				IssuerId: c.IssuerID, NotBeforeUnix: c.NotBefore.Unix(), NotAfterUnix: c.NotAfter.Unix(), RaftIndex: c.RaftIndex}
			if c.RevokedAt != nil {
				hc.RevokedUnix = c.RevokedAt.Unix()
			}
			if c.RevocationReason != nil {
				hc.RevocationReason = *c.RevocationReason
			}
			resp.Certificates = append(resp.Certificates, hc)
		}
		return resp, nil
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return hotWindowCertificates(o.s, f)
}

func hotWindowCertificates(s *Server, f postgres.CertFilter) (*operatorpb.QueryCertificatesResponse, error) {
	var after uint64
	afterPos := -1
	if f.PageToken != "" {
		idx, pos, err := postgres.ParseCertPageToken(f.PageToken)
		if err != nil {
			return nil, err
		}
		after, afterPos = idx, pos
	}
	r := s.fsm.Read()
	revoked := map[string]*raftpb.Revocation{}
	for _, rv := range r.Revocations() {
		revoked[rv.IssuerId+"/"+string(rv.Serial)] = rv
	}
	resp := &operatorpb.QueryCertificatesResponse{Source: SourceRaft}
	from := after
	if afterPos >= 0 && from > 0 {
		from-- // the token's block itself may hold more records
	}
	lastPos := 0
	for _, b := range r.LedgerBlocksAfter(from, math.MaxInt) {
		for i, rec := range b.Records {
			if b.Index < after || (b.Index == after && i <= afterPos) {
				continue
			}
			rv := revoked[rec.IssuerId+"/"+string(rec.Serial)]
			switch {
			case !f.Since.IsZero() && rec.NotBeforeUnix < f.Since.Unix(),
				!f.Until.IsZero() && rec.NotBeforeUnix >= f.Until.Unix(),
				f.SPIFFEID != "" && rec.SpiffeId != f.SPIFFEID,
				f.NodeID != "" && rec.NodeId != f.NodeID,
				f.Revoked && rv == nil:
				continue
			}
			if len(resp.Certificates) == f.Limit {
				last := resp.Certificates[len(resp.Certificates)-1]
				resp.NextPageToken = fmt.Sprintf("%d.%d", last.RaftIndex, lastPos)
				return resp, nil
			}
			hc := &operatorpb.HistoryCertificate{Serial: rec.Serial, SpiffeId: rec.SpiffeId, NodeId: rec.NodeId, Profile: rec.Profile,
				IssuerId: rec.IssuerId, NotBeforeUnix: rec.NotBeforeUnix, NotAfterUnix: rec.NotAfterUnix, RaftIndex: b.Index}
			if rv != nil {
				hc.RevokedUnix, hc.RevocationReason = rv.RevokedUnixNano/1e9, rv.Reason
			}
			resp.Certificates = append(resp.Certificates, hc)
			lastPos = i
		}
	}
	return resp, nil
}

// QueryAudit lists audit events: from PostgreSQL when the server has one
// (every server's), from this server's own audit log otherwise or when
// asked.
func (o *operatorService) QueryAudit(ctx context.Context, req *operatorpb.QueryAuditRequest) (*operatorpb.QueryAuditResponse, error) {
	limit, err := pageSize(req.PageSize)
	if err != nil {
		return nil, err
	}
	switch req.Decision {
	case "", string(audit.Allow), string(audit.Deny), string(audit.Info):
	default:
		return nil, status.Errorf(codes.InvalidArgument, "decision %q: want allow, deny or info", req.Decision)
	}
	f := postgres.AuditFilter{Actor: req.Actor, Action: req.Action, Decision: req.Decision, Since: unixNanoOrZero(req.SinceUnixNano),
		Until: unixNanoOrZero(req.UntilUnixNano), Operator: req.Operator, Limit: limit, PageToken: req.PageToken}
	if o.s.cfg.History != nil && !req.Local {
		events, next, err := o.s.cfg.History.ListAudit(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		resp := &operatorpb.QueryAuditResponse{NextPageToken: next, Source: SourcePostgres}
		for _, e := range events {
			resp.Events = append(resp.Events, &operatorpb.HistoryAuditEvent{Server: e.Server, Seq: e.Seq, TimeUnixNano: e.Time.UnixNano(),
				Actor: e.Actor, Action: e.Action, Subject: e.Subject, Decision: e.Decision, Reason: e.Reason, Details: e.Details,
				Count: e.Count, Operator: e.Operator})
		}
		return resp, nil
	}
	if o.s.auditLog == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server keeps no audit log of its own and has no history database")
	}
	return localAudit(o.s, f)
}

func localAudit(s *Server, f postgres.AuditFilter) (*operatorpb.QueryAuditResponse, error) {
	var after uint64
	if f.PageToken != "" {
		_, seq, _, err := postgres.ParseAuditPageToken(f.PageToken)
		if err != nil {
			return nil, err
		}
		after = seq
	}
	resp := &operatorpb.QueryAuditResponse{Source: SourceLocal}
	full := errors.New("page full")
	err := audit.Read(auditDir(s.cfg.DataDir), after+1, func(e audit.Event) error {
		switch {
		case f.Actor != "" && e.Actor != f.Actor,
			f.Action != "" && e.Action != f.Action,
			f.Decision != "" && string(e.Decision) != f.Decision,
			!f.Since.IsZero() && e.Time.Before(f.Since),
			!f.Until.IsZero() && !e.Time.Before(f.Until),
			f.Operator && !s.isOperatorEvent(e):
			return nil
		}
		if len(resp.Events) == f.Limit {
			last := resp.Events[len(resp.Events)-1]
			resp.NextPageToken = fmt.Sprintf("%d.%d.%s", last.TimeUnixNano, last.Seq, last.Server)
			return full
		}
		count := e.Count
		if count == 0 {
			count = 1
		}
		resp.Events = append(resp.Events, &operatorpb.HistoryAuditEvent{Server: s.cfg.NodeID, Seq: e.Seq, TimeUnixNano: e.Time.UnixNano(),
			Actor: e.Actor, Action: e.Action, Subject: e.Subject, Decision: string(e.Decision), Reason: e.Reason, Details: e.Details,
			Count: count, Operator: s.isOperatorEvent(e)})
		return nil
	})
	if err != nil && !errors.Is(err, full) {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return resp, nil
}
