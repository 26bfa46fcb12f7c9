package sds

import (
	"cmp"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
)

// delta is the state of a DeltaSecrets (incremental) stream.
type delta struct {
	started  bool
	wildcard bool
	nonce    string     // of the latest response
	subs     []deltaSub // sorted by name
}

// deltaSub is one name the client is subscribed to.
type deltaSub struct {
	name     string
	explicit bool   // subscribed by name, not only through the wildcard
	has      string // version the client has; "" for none
	told     bool   // the client knows the current state (resource or removal)
	decided  Status // last audited decision (0: none yet)
}

// DeltaSecrets serves the incremental SDS stream. See the package doc for
// the protocol guarantees.
func (s *Server) DeltaSecrets(ss secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	p := &delta{}
	st := s.newStream(ss, MethodDelta, p)
	defer st.close()
	return receive(st, ss.Recv, p.handle)
}

func (p *delta) handle(st *stream, req *discoveryv3.DeltaDiscoveryRequest) (RequestEvent, error) {
	s := st.srv
	ev := RequestEvent{Method: MethodDelta, StreamID: st.id, Nonce: req.GetResponseNonce()}
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return ev, err
	}
	if err := s.checkNames("resource_names_subscribe", req.GetResourceNamesSubscribe()); err != nil {
		return ev, err
	}
	if err := s.checkNames("resource_names_unsubscribe", req.GetResourceNamesUnsubscribe()); err != nil {
		return ev, err
	}
	if p.started && len(req.GetInitialResourceVersions()) > 0 {
		// Only meaningful on a stream's first request; ignored after.
		req.InitialResourceVersions = nil
	}
	initial := make([]string, 0, len(req.GetInitialResourceVersions()))
	for n := range req.GetInitialResourceVersions() {
		initial = append(initial, n)
	}
	if err := s.checkNames("initial_resource_versions", initial); err != nil {
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
	case req.GetResponseNonce() == "":
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
		s.stats.stale.Add(1)
	case RequestNACK:
		ev.Error = errorDetail(req.GetErrorDetail())
		s.stats.nacks.Add(1)
		s.log.Warn("sds NACK", "method", MethodDelta, "stream", st.id, "node", st.nodeID, "nonce", req.GetResponseNonce(), "error", ev.Error)
		st.inflight = false
	case RequestACK:
		s.stats.acks.Add(1)
		st.inflight = false
	}

	// Subscription changes apply whatever the nonce: they are deltas, and
	// a spontaneous request carries none.
	sub, subStar := dedupe(req.GetResourceNamesSubscribe())
	unsub, unsubStar := dedupe(req.GetResourceNamesUnsubscribe())
	if p.started && (ev.Kind == RequestACK || ev.Kind == RequestNACK) && len(sub) == 0 && len(unsub) == 0 && !subStar && !unsubStar && !st.deferred {
		// A bare ACK or NACK: nothing to answer.
		st.mu.Unlock()
		return ev, nil
	}
	if !p.started {
		p.wildcard = subStar || (len(sub) == 0 && len(initial) == 0)
	}
	switch {
	case subStar:
		p.wildcard = true
	case unsubStar:
		p.wildcard = false
	}
	for _, n := range unsub {
		if i, ok := p.find(n); ok {
			p.subs = slices.Delete(p.subs, i, i+1)
		}
	}
	if !p.wildcard {
		p.subs = slices.DeleteFunc(p.subs, func(e deltaSub) bool { return !e.explicit })
	}
	for _, n := range sub {
		i, ok := p.find(n)
		if !ok {
			p.subs = slices.Insert(p.subs, i, deltaSub{name: n, explicit: true})
			continue
		}
		// A client subscribing again may have forgotten the resource:
		// send it again.
		p.subs[i].explicit, p.subs[i].has, p.subs[i].told = true, "", false
	}
	if len(p.subs) > s.cfg.MaxNames {
		n := len(p.subs)
		st.mu.Unlock()
		return ev, statusInvalid("sds: stream subscribes to %d names, at most %d", n, s.cfg.MaxNames)
	}
	for n, v := range req.GetInitialResourceVersions() {
		i, ok := p.find(n)
		switch {
		case ok:
			p.subs[i].has, p.subs[i].told = v, true
		case p.wildcard:
			p.subs = slices.Insert(p.subs, i, deltaSub{name: n, has: v, told: true})
		}
	}
	p.started = true
	st.mu.Unlock()
	return ev, st.flush(false)
}

func (p *delta) build(st *stream) (built, error) {
	if !p.started || (!p.wildcard && len(p.subs) == 0) {
		return built{}, nil
	}
	var explicit []string
	for _, e := range p.subs {
		if e.explicit {
			explicit = append(explicit, e.name)
		}
	}
	names, results, err := st.resolve(explicit, p.wildcard)
	if err != nil {
		return built{}, err
	}
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL}
	var audits []AuditEvent
	current := make(map[string]bool, len(names))
	for i, n := range names {
		current[n] = true
		r := results[i]
		j, ok := p.find(n)
		if !ok { // a wildcard name seen for the first time
			p.subs = slices.Insert(p.subs, j, deltaSub{name: n})
		}
		e := &p.subs[j]
		switch r.Status {
		case Granted:
			if e.decided != Granted {
				audits = append(audits, AuditEvent{Name: n, Decision: DecisionGrant, Version: r.Resource.version})
				e.decided = Granted
			}
			if e.has == r.Resource.version && e.told {
				continue
			}
			a, err := r.Resource.marshal(n)
			if err != nil {
				return built{}, err
			}
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: n, Version: r.Resource.version, Resource: a})
			e.has, e.told = r.Resource.version, true
		case Refused:
			if e.decided != Refused {
				audits = append(audits, AuditEvent{Name: n, Decision: DecisionRefuse, Reason: r.Reason})
				e.decided = Refused
			}
			if e.has == "" && e.told {
				continue
			}
			resp.RemovedResources = append(resp.RemovedResources, n)
			e.has, e.told = "", true
		}
	}
	// Wildcard names the source no longer lists are removed.
	p.subs = slices.DeleteFunc(p.subs, func(e deltaSub) bool {
		if e.explicit || current[e.name] {
			return false
		}
		if e.has != "" {
			resp.RemovedResources = append(resp.RemovedResources, e.name)
		}
		return true
	})
	for i := range audits {
		audits[i].Method, audits[i].StreamID, audits[i].NodeID = MethodDelta, st.id, st.nodeID
	}
	if len(resp.Resources) == 0 && len(resp.RemovedResources) == 0 {
		return built{audits: audits}, nil
	}
	resp.SystemVersionInfo = versionDigest(func(yield func(string, string) bool) {
		for _, e := range p.subs {
			if e.has != "" && !yield(e.name, e.has) {
				return
			}
		}
	})
	resp.Nonce = newNonce()
	p.nonce = resp.Nonce
	return built{msg: resp, resources: len(resp.Resources), removals: len(resp.RemovedResources), audits: audits}, nil
}

func (p *delta) find(name string) (int, bool) {
	return slices.BinarySearchFunc(p.subs, name, func(e deltaSub, n string) int { return cmp.Compare(e.name, n) })
}
