package sds

import (
	"context"
	"slices"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FetchSecrets answers one request with the state a SotW stream would get
// for the same names: the granted secrets, in request order, refused names
// left out (audited), version_info and a nonce. It waits up to
// Config.FetchWait (or the call's deadline) for pending names, then
// answers with what is granted; an empty resource_names fetches every
// name the caller may have.
func (s *Server) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	s.stats.requests.Add(1)
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return nil, err
	}
	if err := s.checkNames("resource_names", req.GetResourceNames()); err != nil {
		return nil, err
	}
	src, err := s.source(ctx, req.GetNode())
	if err != nil {
		return nil, err
	}
	names, star := dedupe(req.GetResourceNames())
	wildcard := star || len(names) == 0

	w := &fetchWaiter{ch: make(chan struct{}, 1)}
	var topics []string
	defer func() { s.hub.setTopics(w, topics, nil) }()
	timer := time.NewTimer(s.cfg.FetchWait)
	defer timer.Stop()
	waited := false
	var results []Result
	for attempt := 0; ; attempt++ {
		names2, rs, ts, err := resolveNames(ctx, src, names, wildcard)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(ts, topics) {
			s.hub.setTopics(w, topics, ts)
			topics = ts
			if !waited && attempt < 2 {
				continue // resolve again: a change may have raced the registration
			}
		}
		results = rs
		pending := slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Pending })
		if !pending || waited {
			names = names2
			break
		}
		select {
		case <-w.ch:
		case <-timer.C:
			waited = true
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}

	var audits []AuditEvent
	for i, r := range results {
		switch r.Status {
		case Granted:
			audits = append(audits, AuditEvent{Method: MethodFetch, NodeID: req.GetNode().GetId(), Name: names[i], Decision: DecisionGrant, Version: r.Resource.version})
		case Refused:
			audits = append(audits, AuditEvent{Method: MethodFetch, NodeID: req.GetNode().GetId(), Name: names[i], Decision: DecisionRefuse, Reason: r.Reason})
		}
	}
	s.audit(ctx, audits)
	res, err := anys(names, results)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &discoveryv3.DiscoveryResponse{
		VersionInfo: grantedVersion(names, results),
		Resources:   res,
		TypeUrl:     SecretTypeURL,
		Nonce:       newNonce(),
	}
	s.stats.responses.Add(1)
	s.stats.resources.Add(uint64(len(res)))
	s.onRequest(ctx, RequestEvent{Method: MethodFetch, NodeID: req.GetNode().GetId(), Kind: RequestInitial})
	return resp, nil
}

func statusInvalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// grantedVersion is the version_info of a SotW response or fetch carrying
// the granted results: the same content gives the same version on every
// stream and fetch.
func grantedVersion(names []string, results []Result) string {
	type pair struct{ n, v string }
	var ps []pair
	for i, r := range results {
		if r.Status == Granted {
			ps = append(ps, pair{names[i], r.Resource.version})
		}
	}
	slices.SortFunc(ps, func(a, b pair) int { return strings.Compare(a.n, b.n) })
	return versionDigest(func(yield func(string, string) bool) {
		for _, p := range ps {
			if !yield(p.n, p.v) {
				return
			}
		}
	})
}
