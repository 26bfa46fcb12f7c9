package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Admins are replicated state: who may use the operator API over mutual
// TLS is the same on every server. Config.AdminIDs seeds the list while
// it is empty (a new cluster, or one from before admins were replicated);
// afterwards `meshca admin add|remove` changes it, and a server whose
// AdminIDs are not all admins says so in its log.

// seedAdmins records Config.AdminIDs as the cluster's admins if it has
// none yet, once the cluster can be written, retrying until ctx ends.
func (s *Server) seedAdmins(ctx context.Context) error {
	if len(s.cfg.AdminIDs) == 0 {
		return nil
	}
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := s.trySeedAdmins(ctx)
		if err == nil {
			return nil
		}
		s.log.Debug("seeding the admins; retrying", "err", err, "retry_in", backoff)
		if alarm.Sleep(ctx, s.cfg.Clock, backoff) != nil {
			return nil
		}
	}
}

func (s *Server) trySeedAdmins(ctx context.Context) error {
	if s.fsm.Read().TrustDomain() == nil {
		return fmt.Errorf("not bootstrapped yet")
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return err
	}
	r := s.fsm.Read()
	if admins := r.Admins(); len(admins) > 0 {
		var missing []string
		for _, id := range s.cfg.AdminIDs {
			if !r.IsAdmin(id) {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			s.log.Warn("these --admin-id are not admins of the cluster, whose list is replicated (--admin-id seeds it only while it is empty): add them with meshca admin add",
				"admin_ids", strings.Join(missing, ", "))
		}
		return nil
	}
	for _, id := range s.cfg.AdminIDs {
		if _, err := s.node.Apply(ctx, putAdminCommand(id, "admin_ids of "+s.cfg.NodeID, s.cfg.Clock.Now())); err != nil {
			return err
		}
		s.events.Record(audit.Event{Actor: s.cfg.NodeID, Action: "admin.add", Subject: id, Decision: audit.Info, Reason: "seeded from --admin-id"})
	}
	s.log.Info("the cluster's admins are seeded from --admin-id", "admin_ids", strings.Join(s.cfg.AdminIDs, ", "))
	return nil
}

func putAdminCommand(id, by string, now time.Time) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutAdmin{PutAdmin: &raftpb.PutAdmin{Admin: &raftpb.Admin{
		SpiffeId: id, AddedUnixNano: now.UnixNano(), AddedBy: by}}}}
}

// isAdmin reports whether id may use the operator API over mutual TLS.
func (s *Server) isAdmin(id string) bool {
	r := s.fsm.Read()
	if r.IsAdmin(id) {
		return true
	}
	// Until the list is seeded (moments after the bootstrap), the local
	// configuration decides.
	return len(r.Admins()) == 0 && slices.Contains(s.cfg.AdminIDs, id)
}

// checkAdminID refuses an admin SPIFFE ID outside the trust domain.
func (s *Server) checkAdminID(id string) error {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "admin %q: %v", id, err)
	}
	if sid.TrustDomain() != s.td {
		return status.Errorf(codes.InvalidArgument, "admin %s is not in trust domain %s", id, s.td.Name())
	}
	return nil
}

func (o *operatorService) AddAdmin(ctx context.Context, req *operatorpb.AddAdminRequest) (*operatorpb.AdminResponse, error) {
	if err := o.s.checkAdminID(req.SpiffeId); err != nil {
		o.s.auditOp(ctx, "admin.add", req.SpiffeId, audit.Deny, status.Convert(err).Message(), nil)
		return nil, err
	}
	if _, err := o.s.node.Apply(ctx, putAdminCommand(req.SpiffeId, adminActor(ctx), o.s.cfg.Clock.Now())); err != nil {
		return nil, fmt.Errorf("add admin %s: %w", req.SpiffeId, err)
	}
	o.s.auditOp(ctx, "admin.add", req.SpiffeId, audit.Allow, "", nil)
	return &operatorpb.AdminResponse{}, nil
}

func (o *operatorService) RemoveAdmin(ctx context.Context, req *operatorpb.RemoveAdminRequest) (*operatorpb.AdminResponse, error) {
	_, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteAdmin{DeleteAdmin: &raftpb.DeleteAdmin{SpiffeId: req.SpiffeId}}})
	if raftfsmNotFound(err) {
		o.s.auditOp(ctx, "admin.remove", req.SpiffeId, audit.Deny, "not an admin", nil)
		return nil, status.Errorf(codes.NotFound, "%s is not an admin (meshca admin list shows who is)", req.SpiffeId)
	}
	if err != nil {
		return nil, fmt.Errorf("remove admin %s: %w", req.SpiffeId, err)
	}
	o.s.auditOp(ctx, "admin.remove", req.SpiffeId, audit.Allow, "", nil)
	return &operatorpb.AdminResponse{}, nil
}

func (o *operatorService) ListAdmins(ctx context.Context, _ *operatorpb.ListAdminsRequest) (*operatorpb.ListAdminsResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, err
	}
	resp := &operatorpb.ListAdminsResponse{}
	for _, a := range o.s.fsm.Read().Admins() {
		resp.Admins = append(resp.Admins, &operatorpb.AdminInfo{SpiffeId: a.SpiffeId, AddedUnix: time.Unix(0, a.AddedUnixNano).Unix(), AddedBy: a.AddedBy})
	}
	return resp, nil
}

func raftfsmNotFound(err error) bool { return errors.Is(err, raftfsm.ErrNotFound) }
