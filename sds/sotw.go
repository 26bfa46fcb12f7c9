package sds

import (
	"cmp"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// sotw is the state of a StreamSecrets (state of the world) stream.
type sotw struct {
	started  bool     // the first request has been handled
	wildcard bool     // every name of the source (plus names)
	names    []string // explicit subscription, in request order
	answered bool     // the current subscription has been answered
	nonce    string   // of the latest response
	sent     []sotwSent
}

// sotwSent is what the latest response said of one name: the resource it
// carried, or nil for a refused name. Sorted by name.
type sotwSent struct {
	name string
	res  *Resource
}

func (e sotwSent) version() string {
	if e.res == nil {
		return ""
	}
	return e.res.version
}

// StreamSecrets serves the state-of-the-world SDS stream. See the package
// doc for the protocol guarantees.
func (s *Server) StreamSecrets(ss secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	p := &sotw{}
	st := s.newStream(ss, MethodStream, p)
	defer st.close()
	return receive(st, ss.Recv, p.handle)
}

func (p *sotw) handle(st *stream, req *discoveryv3.DiscoveryRequest) (RequestEvent, error) {
	s := st.srv
	ev := RequestEvent{Method: MethodStream, StreamID: st.id, Nonce: req.GetResponseNonce()}
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return ev, err
	}
	if err := s.checkNames("resource_names", req.GetResourceNames()); err != nil {
		return ev, err
	}
	if st.src == nil {
		src, err := s.source(st.ctx, req.GetNode())
		if err != nil {
			return ev, err
		}
		st.mu.Lock()
		st.src, st.nodeID = src, req.GetNode().GetId()
		st.mu.Unlock()
	}

	ev.NodeID = st.nodeID
	st.mu.Lock()
	switch {
	case !p.started:
		ev.Kind = RequestInitial
	case p.nonce == "":
		ev.Kind = RequestUpdate
	case req.GetResponseNonce() != p.nonce:
		ev.Kind = RequestStale
	case req.GetErrorDetail() != nil:
		ev.Kind = RequestNACK
	default:
		ev.Kind = RequestACK
	}
	switch ev.Kind {
	case RequestStale:
		// Superseded by a response the client has not seen yet; its ACK
		// of that one will carry its current subscription.
		st.mu.Unlock()
		s.stats.stale.Add(1)
		return ev, nil
	case RequestNACK:
		ev.Error = errorDetail(req.GetErrorDetail())
		s.stats.nacks.Add(1)
		s.log.Warn("sds NACK", "method", MethodStream, "stream", st.id, "node", st.nodeID, "nonce", req.GetResponseNonce(), "version", req.GetVersionInfo(), "error", ev.Error)
		st.inflight = false
	case RequestACK:
		s.stats.acks.Add(1)
		st.inflight = false
	}

	names, star := dedupe(req.GetResourceNames())
	wildcard := star
	switch {
	case !p.started:
		wildcard = wildcard || len(names) == 0
	case len(req.GetResourceNames()) == 0:
		wildcard = p.wildcard // an empty list keeps a wildcard, or unsubscribes all
	}
	if !p.started || wildcard != p.wildcard || !slices.Equal(names, p.names) {
		p.wildcard, p.names, p.answered = wildcard, names, false
	}
	p.started = true
	// An ACK or NACK that leaves the subscription as it was sends nothing,
	// unless a push waited for it: a NACKed content would be rejected
	// again; the next change is pushed.
	need := !p.answered || st.deferred
	st.mu.Unlock()
	if !need {
		return ev, nil
	}
	return ev, st.flush(false)
}

func (p *sotw) build(st *stream) (built, error) {
	if !p.started || (!p.wildcard && len(p.names) == 0) {
		return built{}, nil
	}
	names, results, err := st.resolve(p.names, p.wildcard)
	if err != nil {
		return built{}, err
	}
	var audits []AuditEvent
	ordered := make([]sotwSent, 0, len(names))
	allPending := len(names) > 0
	for i, n := range names {
		r := results[i]
		old, had := p.find(n)
		switch r.Status {
		case Granted:
			allPending = false
			ordered = append(ordered, sotwSent{name: n, res: r.Resource})
			if !had || old.res == nil {
				audits = append(audits, AuditEvent{Name: n, Decision: DecisionGrant, Version: r.Resource.version})
			}
		case Refused:
			allPending = false
			ordered = append(ordered, sotwSent{name: n})
			if !had || old.res != nil {
				audits = append(audits, AuditEvent{Name: n, Decision: DecisionRefuse, Reason: r.Reason})
			}
		case Pending:
			if had { // keep what the client has
				ordered = append(ordered, old)
			}
		}
	}
	next := slices.Clone(ordered)
	slices.SortFunc(next, func(a, b sotwSent) int { return cmp.Compare(a.name, b.name) })
	changed := !slices.EqualFunc(next, p.sent, func(a, b sotwSent) bool {
		return a.name == b.name && (a.res == nil) == (b.res == nil) && a.version() == b.version()
	})
	if (p.answered && !changed) || (!p.answered && allPending) {
		return built{}, nil
	}
	resp := &discoveryv3.DiscoveryResponse{
		VersionInfo: versionDigest(func(yield func(string, string) bool) {
			for _, e := range next {
				if e.res != nil && !yield(e.name, e.res.version) {
					return
				}
			}
		}),
		TypeUrl: SecretTypeURL,
		Nonce:   newNonce(),
	}
	for _, e := range ordered {
		if e.res == nil {
			continue
		}
		a, err := e.res.marshal(e.name)
		if err != nil {
			return built{}, err
		}
		resp.Resources = append(resp.Resources, a)
	}
	p.sent, p.answered, p.nonce = next, true, resp.Nonce
	for i := range audits {
		audits[i].Method, audits[i].StreamID, audits[i].NodeID = MethodStream, st.id, st.nodeID
	}
	return built{msg: resp, resources: len(resp.Resources), audits: audits}, nil
}

func (p *sotw) find(name string) (sotwSent, bool) {
	i, ok := slices.BinarySearchFunc(p.sent, name, func(e sotwSent, n string) int { return cmp.Compare(e.name, n) })
	if !ok {
		return sotwSent{}, false
	}
	return p.sent[i], true
}

// anys returns the marshaled secrets of the granted results, in order,
// each named as requested.
func anys(names []string, results []Result) ([]*anypb.Any, error) {
	var out []*anypb.Any
	for i, r := range results {
		if r.Status != Granted {
			continue
		}
		a, err := r.Resource.marshal(names[i])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// receive runs a stream's receive loop: every request is counted, handled
// and reported to the server's request hook, until the client ends the
// stream or handle refuses a request.
func receive[R any](st *stream, recv func() (R, error), handle func(*stream, R) (RequestEvent, error)) error {
	s := st.srv
	for {
		req, err := recv()
		if err != nil {
			return recvError(err)
		}
		s.stats.requests.Add(1)
		ev, err := handle(st, req)
		if err != nil {
			return err
		}
		s.onRequest(st.ctx, ev)
	}
}
