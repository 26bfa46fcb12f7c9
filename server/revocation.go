package server

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Revocation (issue 13). An operator revokes certificates the ledger
// knows, by serial, SPIFFE ID or node; the revocations go through Raft
// with what the ledger says of each certificate (issuer, expiry, node), and
// every server's CRL loop, woken by the revocation scope, signs the CRLs of
// its own intermediates again (the leader those of the roots). Agents get
// the new CRLs over Sync and put them in their SDS validation contexts. A
// revoked certificate cannot authenticate an agent (no renewal, no
// workload SVIDs, no Sync); a banned node is refused everything and its
// unexpired certificates are revoked with the ban.

// revokeChunk bounds the revocations of one Raft command.
const revokeChunk = 4096

// Limits of a certificate listing, and of the certificates a revocation
// lists in its answer.
const (
	maxRevokeListed      = 1000
	defaultCertListLimit = 1000
	maxCertListLimit     = 100_000
)

// validReason reports whether r is an RFC 5280 CRLReason a leaf may carry
// (7 is unused; 8, removeFromCRL, is for delta CRLs only).
func validReason(r int32) bool { return r >= 0 && r <= 10 && r != 7 && r != 8 }

func parseSerial(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0x")
	if len(s)%2 == 1 {
		s = "0" + s // as big.Int.Text(16) prints it
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) == 0 || len(b) > 20 {
		return nil, status.Errorf(codes.InvalidArgument, "serial %q: want 1 to 20 bytes of hex", s)
	}
	// Serials are recorded as big.Int bytes: no leading zero bytes.
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	return b, nil
}

func toCertificate(rec *raftpb.LedgerRecord, rv *raftpb.Revocation) *operatorpb.Certificate {
	c := &operatorpb.Certificate{Serial: hex.EncodeToString(rec.Serial), SpiffeId: rec.SpiffeId, NodeId: rec.NodeId, Profile: rec.Profile,
		IssuerId: rec.IssuerId, NotBeforeUnix: rec.NotBeforeUnix, NotAfterUnix: rec.NotAfterUnix}
	if rv != nil {
		c.Revoked, c.RevokedUnix, c.Reason = true, rv.RevokedUnixNano/int64(time.Second), rv.Reason
	}
	return c
}

func revocationOf(rec *raftpb.LedgerRecord, now time.Time, reason int32) *raftpb.Revocation {
	return &raftpb.Revocation{IssuerId: rec.IssuerId, Serial: rec.Serial, RevokedUnixNano: now.UnixNano(), Reason: reason,
		NotAfterUnix: rec.NotAfterUnix, SpiffeId: rec.SpiffeId, NodeId: rec.NodeId}
}

// unexpired keeps the records of certificates still valid at now.
func unexpired(recs []*raftpb.LedgerRecord, now time.Time) []*raftpb.LedgerRecord {
	var out []*raftpb.LedgerRecord
	for _, r := range recs {
		if r.NotAfterUnix > now.Unix() {
			out = append(out, r)
		}
	}
	return out
}

// applyRevocations records revocations in chunks. Each chunk is its own
// command; a failure leaves the chunks before it recorded (a retry of the
// same request records the rest: the first revocation of a serial stands).
func (s *Server) applyRevocations(ctx context.Context, rs []*raftpb.Revocation) error {
	for len(rs) > 0 {
		n := min(len(rs), revokeChunk)
		if _, err := s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{Revocations: rs[:n]}}}); err != nil {
			return err
		}
		rs = rs[n:]
	}
	return nil
}

// RevokeCertificates revokes the unexpired certificates the ledger has for
// a serial, a SPIFFE ID or a node.
func (o *operatorService) RevokeCertificates(ctx context.Context, req *operatorpb.RevokeCertificatesRequest) (*operatorpb.RevokeCertificatesResponse, error) {
	set := 0
	for _, v := range []string{req.Serial, req.SpiffeId, req.NodeId} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, status.Error(codes.InvalidArgument, "revoke needs exactly one of a serial, a SPIFFE ID and a node ID")
	}
	if !validReason(req.Reason) {
		return nil, status.Errorf(codes.InvalidArgument, "reason %d is no CRLReason a certificate may carry (0-6, 9, 10)", req.Reason)
	}
	var serial []byte
	if req.Serial != "" {
		var err error
		if serial, err = parseSerial(req.Serial); err != nil {
			return nil, err
		}
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	now := o.s.cfg.Clock.Now()
	var recs []*raftpb.LedgerRecord
	subject := req.Serial + req.SpiffeId + req.NodeId
	refuse := func(err error) (*operatorpb.RevokeCertificatesResponse, error) {
		o.s.auditOp(ctx, "cert.revoke", subject, audit.Deny, status.Convert(err).Message(), nil)
		return nil, err
	}
	switch {
	case serial != nil:
		rec := r.LedgerRecord(serial)
		if rec == nil {
			return refuse(status.Errorf(codes.NotFound, "no certificate with serial %s in the ledger", hex.EncodeToString(serial)))
		}
		if rec.NotAfterUnix <= now.Unix() {
			return refuse(status.Errorf(codes.FailedPrecondition, "certificate %s expired at %s: nothing to revoke", hex.EncodeToString(serial),
				time.Unix(rec.NotAfterUnix, 0).UTC().Format(time.RFC3339)))
		}
		recs = []*raftpb.LedgerRecord{rec}
	case req.SpiffeId != "":
		recs = unexpired(r.LedgerBySPIFFEID(req.SpiffeId), now)
	default:
		recs = unexpired(r.LedgerByNode(req.NodeId), now)
	}
	if len(recs) == 0 {
		return refuse(status.Errorf(codes.NotFound, "no unexpired certificate of %s in the ledger", subject))
	}
	resp := &operatorpb.RevokeCertificatesResponse{DryRun: req.DryRun}
	var rs []*raftpb.Revocation
	for _, rec := range recs {
		rv := r.Revocation(rec.IssuerId, rec.Serial)
		if rv == nil {
			rv = revocationOf(rec, now, req.Reason)
			rs = append(rs, rv)
			if req.DryRun {
				rv = nil // not revoked (yet)
			}
		} else {
			resp.AlreadyRevoked++
		}
		if len(resp.Certificates) < maxRevokeListed {
			resp.Certificates = append(resp.Certificates, toCertificate(rec, rv))
		}
	}
	resp.Count, resp.Truncated = int64(len(recs)), len(recs) > len(resp.Certificates)
	if req.DryRun {
		return resp, nil
	}
	if err := o.s.applyRevocations(ctx, rs); err != nil {
		o.s.auditOp(ctx, "cert.revoke", subject, audit.Deny, err.Error(), nil)
		return nil, fmt.Errorf("record the revocations: %w", err)
	}
	o.s.auditOp(ctx, "cert.revoke", subject, audit.Allow, "", map[string]string{"revoked": fmt.Sprint(len(rs)),
		"already_revoked": fmt.Sprint(len(recs) - len(rs)), "reason": fmt.Sprint(req.Reason)})
	return resp, nil
}

// ListCertificates lists ledger records matching every filter given.
func (o *operatorService) ListCertificates(ctx context.Context, req *operatorpb.ListCertificatesRequest) (*operatorpb.ListCertificatesResponse, error) {
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = defaultCertListLimit
	case limit < 0 || limit > maxCertListLimit:
		return nil, status.Errorf(codes.InvalidArgument, "limit %d: want 1 to %d", limit, maxCertListLimit)
	}
	var within time.Duration
	if req.ExpiringWithinSeconds != 0 {
		var err error
		if within, err = duration.Seconds("expiring_within_seconds", req.ExpiringWithinSeconds, time.Second, 100*365*24*time.Hour); err != nil {
			return nil, err
		}
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	now := o.s.cfg.Clock.Now()
	resp := &operatorpb.ListCertificatesResponse{}
	keep := func(rec *raftpb.LedgerRecord) bool {
		switch {
		case req.SpiffeId != "" && rec.SpiffeId != req.SpiffeId,
			req.NodeId != "" && rec.NodeId != req.NodeId,
			req.IssuerId != "" && rec.IssuerId != req.IssuerId,
			within != 0 && (rec.NotAfterUnix <= now.Unix() || rec.NotAfterUnix > now.Add(within).Unix()):
			return true
		}
		rv := r.Revocation(rec.IssuerId, rec.Serial)
		if req.RevokedOnly && rv == nil {
			return true
		}
		if len(resp.Certificates) == limit {
			resp.Truncated = true
			return false
		}
		resp.Certificates = append(resp.Certificates, toCertificate(rec, rv))
		return true
	}
	switch {
	case req.SpiffeId != "":
		for _, rec := range r.LedgerBySPIFFEID(req.SpiffeId) {
			if !keep(rec) {
				break
			}
		}
	case req.NodeId != "":
		for _, rec := range r.LedgerByNode(req.NodeId) {
			if !keep(rec) {
				break
			}
		}
	default:
		r.LedgerAll(keep)
	}
	sort.SliceStable(resp.Certificates, func(i, j int) bool {
		return resp.Certificates[i].NotAfterUnix < resp.Certificates[j].NotAfterUnix
	})
	return resp, nil
}

// GetCertificate returns one ledger record by serial.
func (o *operatorService) GetCertificate(ctx context.Context, req *operatorpb.GetCertificateRequest) (*operatorpb.Certificate, error) {
	serial, err := parseSerial(req.Serial)
	if err != nil {
		return nil, err
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	rec := r.LedgerRecord(serial)
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "no certificate with serial %s in the ledger (unknown, or expired and pruned)", hex.EncodeToString(serial))
	}
	return toCertificate(rec, r.Revocation(rec.IssuerId, rec.Serial)), nil
}

// GetCRL returns an authority's current CRL.
func (o *operatorService) GetCRL(ctx context.Context, req *operatorpb.GetCRLRequest) (*operatorpb.CRL, error) {
	if req.IssuerId == "" {
		return nil, status.Error(codes.InvalidArgument, "which issuer's CRL? (an authority ID, see meshca authority show)")
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	c := o.s.fsm.Read().CRL(req.IssuerId)
	if c == nil {
		return nil, status.Errorf(codes.NotFound, "no CRL of authority %q", req.IssuerId)
	}
	out := toOperatorCRL(c)
	if req.WithoutDer {
		out.Der = nil
	}
	return out, nil
}

func toOperatorCRL(c *raftpb.CRL) *operatorpb.CRL {
	out := &operatorpb.CRL{IssuerId: c.AuthorityId, Number: c.Number, Der: c.Der, ThisUpdateUnix: c.ThisUpdateUnix, NextUpdateUnix: c.NextUpdateUnix,
		Revoked: int32(c.Revoked)}
	if c.Revoked == 0 {
		// Signed before CRL records counted their entries.
		if n, err := crlEntries(c.Der); err == nil {
			out.Revoked = int32(n)
		}
	}
	return out
}

// BanNode bans or unbans a node. A ban revokes the node's unexpired
// certificates (its agent SVIDs and its workloads') in the same step.
func (o *operatorService) BanNode(ctx context.Context, req *operatorpb.BanNodeRequest) (*operatorpb.BanNodeResponse, error) {
	if req.SpiffeId == "" {
		return nil, status.Error(codes.InvalidArgument, "which node? (its SPIFFE ID, see meshca node list)")
	}
	if !validReason(req.Reason) {
		return nil, status.Errorf(codes.InvalidArgument, "reason %d is no CRLReason a certificate may carry (0-6, 9, 10)", req.Reason)
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	n := r.Node(req.SpiffeId)
	if n == nil {
		return nil, o.refuse(ctx, map[bool]string{true: "node.ban", false: "node.unban"}[req.Banned], req.SpiffeId, codes.NotFound, "no node %q", req.SpiffeId)
	}
	now := o.s.cfg.Clock.Now()
	resp := &operatorpb.BanNodeResponse{DryRun: req.DryRun}
	var rs []*raftpb.Revocation
	if req.Banned {
		for _, rec := range unexpired(r.LedgerByNode(req.SpiffeId), now) {
			if r.Revocation(rec.IssuerId, rec.Serial) != nil {
				continue
			}
			rv := revocationOf(rec, now, req.Reason)
			rs = append(rs, rv)
			if req.DryRun {
				rv = nil // not revoked (yet)
			}
			if len(resp.Revoked) < maxRevokeListed {
				resp.Revoked = append(resp.Revoked, toCertificate(rec, rv))
			}
		}
	}
	resp.RevokedCount = int64(len(rs))
	after := fromRaftNode(n)
	after.Banned = req.Banned
	resp.Node = after
	if req.DryRun {
		return resp, nil
	}
	action := map[bool]string{true: "node.ban", false: "node.unban"}[req.Banned]
	// All but the last chunk first: the ban and the last chunk are one step.
	head := len(rs) - min(len(rs), revokeChunk)
	if err := o.s.applyRevocations(ctx, rs[:head]); err != nil {
		return nil, fmt.Errorf("revoke the node's certificates: %w", err)
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_BanNode{BanNode: &raftpb.BanNode{NodeId: req.SpiffeId,
		Banned: req.Banned, Revocations: rs[head:]}}}); err != nil {
		o.s.auditOp(ctx, action, req.SpiffeId, audit.Deny, err.Error(), nil)
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, action, req.SpiffeId, audit.Allow, "", map[string]string{"revoked": fmt.Sprint(len(rs))})
	return resp, nil
}

// EvictNode forgets a node, which must attest again. A banned node is not
// evicted: eviction would forget the ban.
func (o *operatorService) EvictNode(ctx context.Context, req *operatorpb.EvictNodeRequest) (*operatorpb.EvictNodeResponse, error) {
	if req.SpiffeId == "" {
		return nil, status.Error(codes.InvalidArgument, "which node? (its SPIFFE ID, see meshca node list)")
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	n := r.Node(req.SpiffeId)
	switch {
	case n == nil:
		return nil, o.refuse(ctx, "node.evict", req.SpiffeId, codes.NotFound, "no node %q", req.SpiffeId)
	case n.Banned:
		return nil, o.refuse(ctx, "node.evict", req.SpiffeId, codes.FailedPrecondition, "node %s is banned: evicting it would forget the ban (unban it first)", req.SpiffeId)
	}
	resp := &operatorpb.EvictNodeResponse{Node: fromRaftNode(n), DryRun: req.DryRun}
	for _, e := range r.EntriesByParent(req.SpiffeId) {
		resp.Entries = append(resp.Entries, fromRaftEntry(e))
	}
	if req.DryRun {
		return resp, nil
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_EvictNode{EvictNode: &raftpb.EvictNode{NodeId: req.SpiffeId}}}); err != nil {
		o.s.auditOp(ctx, "node.evict", req.SpiffeId, audit.Deny, err.Error(), nil)
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, "node.evict", req.SpiffeId, audit.Allow, "", map[string]string{"entries": fmt.Sprint(len(resp.Entries))})
	return resp, nil
}

// peerRevoked reports whether the certificate a caller authenticated with
// is revoked.
func (s *Server) peerRevoked(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 || info.State.PeerCertificates[0].SerialNumber == nil {
		return false
	}
	serial := info.State.PeerCertificates[0].SerialNumber.Bytes()
	r := s.fsm.Read()
	if !r.MaybeRevoked(serial) { // the common case: one index lookup
		return false
	}
	rec := r.LedgerRecord(serial)
	return rec != nil && r.Revoked(rec.IssuerId, serial)
}

// liveRevocations keeps the revocations of certificates unexpired at now
// (those of unknown expiry too), and returns when the first of them
// expires (zero if none will).
func liveRevocations(rs []*raftpb.Revocation, now time.Time) ([]*raftpb.Revocation, time.Time) {
	out := rs[:0:0]
	var first time.Time
	for _, rv := range rs {
		if rv.NotAfterUnix != 0 && rv.NotAfterUnix < now.Unix() {
			continue
		}
		out = append(out, rv)
		if rv.NotAfterUnix != 0 {
			if t := time.Unix(rv.NotAfterUnix+1, 0); first.IsZero() || t.Before(first) {
				first = t
			}
		}
	}
	return out, first
}

// crlEntries counts the entries of a DER CRL (either profile: the
// signature is not checked).
func crlEntries(der []byte) (int, error) {
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return 0, fmt.Errorf("parse CRL: %w", err)
	}
	return len(rl.RevokedCertificateEntries), nil
}
