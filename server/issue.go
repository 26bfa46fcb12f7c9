package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The issuance pipeline. Every certificate and JWT a server hands out goes
// through it, whatever asked (an agent for itself or its workloads, an
// operator):
//
//	authenticate (the API did) → authorize (Authorizer) → admit (rate and
//	queue) → sign (in parallel, up to the free signing slots) → commit the
//	ledger records (one group commit per batch) → audit → return
//
// No certificate leaves before its record is committed on a quorum.

// issued is the outcome of one request.
type issued struct {
	svid *ca.X509SVID
	iss  *issuer
	// err is the request's own refusal or failure (the others may succeed).
	err error
	// denied classifies a refusal for good (denyPolicy, denyCSR,
	// denyLedger) for the metrics; empty for a failure to retry.
	denied string
}

// commitFunc records the signed certificates of a batch: errs[i] is the
// refusal of record i (a serial collision), err a failure of all.
type commitFunc func(ctx context.Context, recs []*raftpb.LedgerRecord) (errs []error, err error)

// errNotCommitted marks a certificate signed but not handed out because its
// batch's commit failed.
var errNotCommitted = errors.New("server: the certificate was not recorded; it is not handed out")

// budget is whose rate a caller's requests count against: its node's, or
// (operator set) the operators' together.
func (c *Caller) budget() (node string, operator bool) {
	if c.AgentID != "" {
		return c.AgentID, false
	}
	return operatorNodeID, true
}

// authorize runs the Authorizer on each request and applies its decisions;
// refused requests get their err set and are audited. An error means the
// Authorizer could not decide: nothing is issued.
func (s *Server) authorize(ctx context.Context, reqs []*Request, out []issued) error {
	ds := make([]Decision, len(reqs))
	if ba, ok := s.authorizer.(batchAuthorizer); ok {
		if err := ba.AuthorizeBatch(ctx, reqs, ds); err != nil {
			return fmt.Errorf("authorize: %w", err)
		}
	} else {
		for i, r := range reqs {
			d, err := s.authorizer.Authorize(ctx, r)
			if err != nil {
				return fmt.Errorf("authorize: %w", err)
			}
			ds[i] = d
		}
	}
	for i, r := range reqs {
		d := ds[i]
		if !d.Allow {
			out[i].err, out[i].denied = status.Error(codes.PermissionDenied, d.Reason), denyPolicy
			s.events.Record(audit.Event{Actor: r.Caller.actor(), Action: r.Kind.action(), Subject: r.subject(), Decision: audit.Deny,
				Reason: d.Reason, Details: entryDetail(r)})
			continue
		}
		if d.SPIFFEID != "" {
			r.SPIFFEID = d.SPIFFEID
		}
		if d.TTL != 0 {
			r.TTL = d.TTL
		}
		if d.DNSNames != nil {
			r.DNSNames = d.DNSNames
		}
	}
	return nil
}

func entryDetail(r *Request) map[string]string {
	if r.EntryID == "" {
		return nil
	}
	return map[string]string{"entry": r.EntryID}
}

// issueX509 runs the pipeline for a batch of X.509 requests of one caller.
// commit records the signed ones (nil: the replicated ledger, one group
// commit for the batch). The error is a failure of the whole batch: the
// server sheds load, the Authorizer could not decide, or the commit failed
// (no leader, no quorum); the caller retries. Otherwise each request has
// its own outcome.
func (s *Server) issueX509(ctx context.Context, reqs []*Request, commit commitFunc) (out []issued, err error) {
	out = make([]issued, len(reqs))
	if len(reqs) == 0 {
		return out, nil
	}
	// Latencies are measured on the monotonic clock, not the injected one.
	defer func(began time.Time) { s.metrics.observe(reqs[0].Kind, reqs, out, err, began) }(wallclock.Now())
	if err := s.authorize(ctx, reqs, out); err != nil {
		return nil, err
	}
	allowed := 0
	for i := range out {
		if out[i].err == nil {
			allowed++
		}
	}
	if allowed == 0 {
		return out, nil
	}
	node, operator := reqs[0].Caller.budget()
	done, err := s.admission.admit(ctx, node, operator, allowed)
	if err != nil {
		return nil, err
	}
	defer done()

	// Sign in parallel, as many at once as there are free signing slots,
	// all with the issuers of one moment (rotation swaps them whole).
	set := s.issuers.Load()
	var todo []int
	for i, r := range reqs {
		if out[i].err != nil {
			continue
		}
		iss, ok := set.byProfile[r.Profile]
		if !ok {
			out[i].err = status.Errorf(codes.InvalidArgument, "no issuer for profile %q", r.Profile)
			continue
		}
		if iss.tainted(s.fsm) {
			out[i].err = status.Errorf(codes.Unavailable, "this server's %s intermediate is tainted and being replaced; retry, or use another server", r.Profile)
			continue
		}
		if !iss.hasCRL(s.fsm) {

			out[i].err = status.Errorf(codes.Unavailable, "the CRL of this server's %s intermediate is not published yet; retry, or use another server", r.Profile)
			continue
		}
		out[i].iss = iss
		todo = append(todo, i)
	}
	if err := s.sign(ctx, reqs, out, todo); err != nil {
		return nil, status.FromContextError(err).Err()
	}

	// Refusals of a CSR are the request's; record the signed ones at once.
	var recs []*raftpb.LedgerRecord
	var idx []int
	for i, r := range reqs {
		o := &out[i]
		if o.err != nil {
			if o.svid == nil && o.iss != nil { // the CA refused the request
				o.denied = denyCSR
				s.events.Record(audit.Event{Actor: r.Caller.actor(), Action: r.Kind.action(), Subject: r.subject(), Decision: audit.Deny,
					Reason: o.err.Error(), Details: entryDetail(r)})
			}
			continue
		}
		nodeID := r.Caller.AgentID
		if nodeID == "" {
			nodeID = operatorNodeID
		}
		recs = append(recs, ledgerRecord(o.svid, nodeID, o.iss))
		idx = append(idx, i)
	}
	if len(recs) == 0 {
		return out, nil
	}
	if commit == nil {
		commit = s.node.CommitLedgerBatch
	}
	began := wallclock.Now()
	errs, err := commit(ctx, recs)
	if err != nil {
		return nil, fmt.Errorf("record the certificates: %w", err)
	}
	s.metrics.commit.Observe(wallclock.Since(began).Seconds())
	for k, i := range idx {
		r, o := reqs[i], &out[i]
		if errs[k] != nil {
			o.err, o.svid, o.denied = errs[k], nil, denyLedger
			continue
		}
		d := map[string]string{"serial": hex.EncodeToString(o.svid.SerialNumber.Bytes()), "profile": o.svid.Profile,
			"not_after": o.svid.NotAfter.Format(time.RFC3339)}
		if r.EntryID != "" {
			d["entry"] = r.EntryID
		}
		s.events.Record(audit.Event{Actor: r.Caller.actor(), Action: r.Kind.action(), Subject: o.svid.SPIFFEID, Decision: audit.Allow, Details: d})
	}
	return out, nil
}

// sign signs the CSRs of reqs[todo] with out[i].iss and sets their
// outcome in out. The calling goroutine signs, once it has a signing slot,
// with one more goroutine for each slot free at that moment, up to the
// batch: a single CSR takes no goroutine, a batch no more than it can use.
// The error is ctx's, if it ended while waiting for a slot.
func (s *Server) sign(ctx context.Context, reqs []*Request, out []issued, todo []int) error {
	if len(todo) == 0 {
		return nil
	}
	start, err := s.admission.acquire(ctx)
	if err != nil {
		return err
	}
	var next atomic.Int64
	work := func() (n int) {
		for {
			k := int(next.Add(1)) - 1
			if k >= len(todo) {
				return n
			}
			i := todo[k]
			r, iss := reqs[i], out[i].iss
			svid, err := iss.SignX509SVID(ctx, ca.X509SVIDParams{CSR: r.CSR, SPIFFEID: r.SPIFFEID, DNSNames: r.DNSNames, TTL: r.TTL})
			out[i] = issued{svid: svid, iss: iss, err: err}
			n++
		}
	}
	var wg sync.WaitGroup
	for w := 1; w < len(todo); w++ {
		more, ok := s.admission.tryAcquire()
		if !ok {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.admission.release(more, work())
		}()
	}
	s.admission.release(start, work())
	wg.Wait()
	return nil
}

// issueOne runs the pipeline for a single X.509 request and returns its
// certificate or its error.
func (s *Server) issueOne(ctx context.Context, r *Request, commit commitFunc) (*ca.X509SVID, *issuer, error) {
	out, err := s.issueX509(ctx, []*Request{r}, commit)
	if err != nil {
		return nil, nil, err
	}
	return out[0].svid, out[0].iss, out[0].err
}

// commitCommand is a commitFunc that records the one certificate of a batch
// with a Raft command of its own (an attestation's AttestAgent), built by
// mk around the record.
func (s *Server) commitCommand(mk func(rec *raftpb.LedgerRecord) *raftpb.Command) commitFunc {
	return func(ctx context.Context, recs []*raftpb.LedgerRecord) ([]error, error) {
		if len(recs) != 1 {
			return nil, fmt.Errorf("server: a command commits one certificate, not %d", len(recs))
		}
		if _, err := s.node.Apply(ctx, mk(recs[0])); err != nil {
			return nil, err
		}
		return []error{nil}, nil
	}
}

var _ commitFunc = (*cluster.Node)(nil).CommitLedgerBatch

// issueJWT runs the pipeline for a JWT-SVID: authorized, admitted, signed
// with the cluster's active JWT key, audited. There is no ledger record:
// JWT-SVIDs live five minutes and cannot be revoked.
func (s *Server) issueJWT(ctx context.Context, r *Request) (token string, exp time.Time, err error) {
	out := make([]issued, 1)
	defer func(began time.Time) { s.metrics.observe(r.Kind, []*Request{r}, out, err, began) }(wallclock.Now())
	if err := s.authorize(ctx, []*Request{r}, out); err != nil {
		return "", time.Time{}, err
	}
	if out[0].err != nil {
		return "", time.Time{}, out[0].err
	}
	node, operator := r.Caller.budget()
	done, err := s.admission.admit(ctx, node, operator, 1)
	if err != nil {
		return "", time.Time{}, err
	}
	defer done()
	token, exp, err = s.signJWT(r)
	if err != nil {
		return "", time.Time{}, err
	}
	s.events.Record(audit.Event{Actor: r.Caller.actor(), Action: r.Kind.action(), Subject: r.SPIFFEID, Decision: audit.Allow,
		Details: map[string]string{"entry": r.EntryID, "audience": strings.Join(r.Audience, " "), "not_after": exp.Format(time.RFC3339)}})
	return token, exp, nil
}
