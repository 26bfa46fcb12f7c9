package server

import (
	"strconv"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Issuance outcomes, the result label of meshca_server_issuance_total.
const (
	resultIssued = "issued" // signed and recorded
	resultDenied = "denied" // refused for good: policy, CSR or ledger
	resultFailed = "failed" // not now: shed, unavailable, commit failed
)

// Denial reasons, the reason label of meshca_server_issuance_denials_total:
// a small fixed set, so that the label stays bounded (the words are in the
// audit trail).
const (
	denyPolicy = "policy" // the Authorizer refused (entries or OPA)
	denyCSR    = "csr"    // the CA refused the CSR or the request
	denyLedger = "ledger" // the ledger refused the record
)

// serverMetrics are the events a server counts as they happen. State
// (Raft, ledger, authorities, queue) is read at scrape time by
// stateCollector.
type serverMetrics struct {
	issued   *prometheus.CounterVec   // kind, profile, result
	denials  *prometheus.CounterVec   // kind, reason
	latency  *prometheus.HistogramVec // kind
	failures *prometheus.CounterVec   // kind, code: batches not served now
	commit   prometheus.Histogram     // one ledger group commit
	apply    prometheus.Histogram     // one batch of log entries applied to the state machine
}

func newServerMetrics(reg prometheus.Registerer, s *Server) *serverMetrics {
	ns, sub := metrics.Namespace, "server"
	m := &serverMetrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "issuance_total",
			Help: "Certificates and JWTs asked of this server, by kind (agent_svid, workload_svid, jwt_svid, mint), profile and result (issued, denied, failed)."},
			[]string{"kind", "profile", "result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "issuance_denials_total",
			Help: "Issuance requests refused for good, by kind and reason (policy, csr, ledger); the audit trail has each one's words."},
			[]string{"kind", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "issuance_duration_seconds",
			Help:    "Time to serve one issuance call (a batch of CSRs, or one JWT): authorize, admit, sign, commit.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "issuance_failures_total",
			Help: "Issuance calls not served now, to be retried, by kind and gRPC code (ResourceExhausted: shed by admission control; Unavailable: no leader or quorum)."},
			[]string{"kind", "code"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "ledger_commit_duration_seconds",
			Help:    "Time to commit one batch of ledger records through Raft (quorum fsync'd and applied).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	m.apply = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: "raft", Name: "apply_duration_seconds",
		Help:    "Time to apply one batch of committed Raft log entries to this server's state machine.",
		Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25}})
	decisions := func(cached bool) func() float64 {
		return func() float64 {
			evaluated, fromCache := s.issuance.decisions()
			if cached {
				return float64(fromCache)
			}
			return float64(evaluated)
		}
	}
	policyEvaluated := prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: "policy", Name: "issuance_evaluations_total",
		Help: "Issuance policy decisions evaluated by OPA on this server (every revision)."}, decisions(false))
	policyCached := prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: "policy", Name: "issuance_cached_decisions_total",
		Help: "Issuance policy decisions answered from this server's decision cache (--issuance-decision-cache), not evaluated again."}, decisions(true))
	reg.MustRegister(m.issued, m.denials, m.latency, m.failures, m.commit, m.apply, policyEvaluated, policyCached, &stateCollector{s: s})
	// Every series exists from the start, at zero, so that rates and
	// alerts see the first event.
	for _, kind := range []Kind{KindAgentSVID, KindWorkloadSVID, KindJWTSVID, KindMint} {
		k := kind.String()
		var profiles []string
		for _, p := range ca.Profiles() {
			profiles = append(profiles, p.Name())
		}
		if kind == KindJWTSVID {
			profiles = []string{""}
		}
		for _, p := range profiles {
			for _, r := range []string{resultIssued, resultDenied, resultFailed} {
				m.issued.WithLabelValues(k, p, r)
			}
		}
		for _, r := range []string{denyPolicy, denyCSR, denyLedger} {
			m.denials.WithLabelValues(k, r)
		}
		for _, c := range []codes.Code{codes.ResourceExhausted, codes.Unavailable} {
			m.failures.WithLabelValues(k, c.String())
		}
		m.latency.WithLabelValues(k)
	}
	return m
}

// observe counts the outcome of one issuance call of kind with requests
// reqs: out holds each request's outcome (nil when the whole call failed),
// err the call's error.
func (m *serverMetrics) observe(kind Kind, reqs []*Request, out []issued, err error, began time.Time) {
	k := kind.String()
	m.latency.WithLabelValues(k).Observe(wallclock.Since(began).Seconds()) // monotonic: a latency, not a time of the CA's
	denied := 0
	for i, r := range reqs {
		var o issued
		if len(out) == len(reqs) {
			o = out[i]
		}
		switch {
		case o.denied != "":
			denied++
			m.issued.WithLabelValues(k, r.Profile, resultDenied).Inc()
			m.denials.WithLabelValues(k, o.denied).Inc()
		case err != nil || o.err != nil || len(out) != len(reqs):
			m.issued.WithLabelValues(k, r.Profile, resultFailed).Inc()
		default:
			m.issued.WithLabelValues(k, r.Profile, resultIssued).Inc()
		}
	}
	if err != nil && denied < len(reqs) {
		m.failures.WithLabelValues(k, rpcerr.Code(err).String()).Inc()
	}
}

// stateCollector reads the server's state at each scrape.
type stateCollector struct{ s *Server }

var (
	descRaftState = prometheus.NewDesc("meshca_raft_state", "1 for this server's current Raft state (Leader, Follower, Candidate, Shutdown).", []string{"state"}, nil)
	descLeader    = prometheus.NewDesc("meshca_raft_has_leader", "1 if this server knows a Raft leader.", nil, nil)
	descTerm      = prometheus.NewDesc("meshca_raft_term", "The current Raft term.", nil, nil)
	descCommit    = prometheus.NewDesc("meshca_raft_commit_index", "The Raft commit index this server knows.", nil, nil)
	descApplied   = prometheus.NewDesc("meshca_raft_applied_index", "The last Raft index applied to this server's state machine.", nil, nil)
	descContact   = prometheus.NewDesc("meshca_raft_last_contact_seconds", "Seconds since this follower last heard from the leader (0 on the leader).", nil, nil)
	descLedger    = prometheus.NewDesc("meshca_server_ledger_records", "Certificates in the replicated ledger's hot window (unexpired, plus the grace).", nil, nil)
	descQueue     = prometheus.NewDesc("meshca_server_sign_queue_depth", "CSRs admitted and waiting for a signing slot.", nil, nil)
	descNodes     = prometheus.NewDesc("meshca_server_attested_nodes", "Attested agents in the replicated state.", nil, nil)
	descEntries   = prometheus.NewDesc("meshca_server_entries", "Registration entries in the replicated state.", nil, nil)
	descNotAfter  = prometheus.NewDesc("meshca_authority_not_after_timestamp_seconds",
		"When each authority of the trust domain expires (Unix seconds), by kind (root, intermediate), profile, state and the server holding it.",
		[]string{"id", "kind", "profile", "state", "server"}, nil)
	descJWTNotAfter = prometheus.NewDesc("meshca_jwt_key_not_after_timestamp_seconds", "When each JWT-SVID signing key expires (Unix seconds).", []string{"kid", "state"}, nil)
	descCRLNext     = prometheus.NewDesc("meshca_crl_next_update_timestamp_seconds", "The nextUpdate of each authority's current CRL (Unix seconds).", []string{"id"}, nil)
	descPolicyRev   = prometheus.NewDesc("meshca_policy_issuance_revision", "The OPA issuance policy's revision (0: none; registration entries decide alone).", nil, nil)
	descBundleRev   = prometheus.NewDesc("meshca_policy_bundle_revision", "The latest revision of each OPA authorization bundle.", []string{"name"}, nil)
)

// Describe sends the descriptors.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descLeader, descTerm, descCommit, descApplied, descContact,
		descLedger, descQueue, descNodes, descEntries, descNotAfter, descJWTNotAfter, descCRLNext, descPolicyRev, descBundleRev} {
		ch <- d
	}
}

// Collect reads the state: Raft's stats and one read view of the
// replicated state.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	rf := s.node.Raft()
	cur := rf.State().String()
	for _, st := range []string{"Leader", "Follower", "Candidate", "Shutdown"} {
		v := 0.0
		if st == cur {
			v = 1
		}
		gauge(descRaftState, v, st)
	}
	if _, id := rf.LeaderWithID(); id != "" {
		gauge(descLeader, 1)
	} else {
		gauge(descLeader, 0)
	}
	stats := rf.Stats()
	if t, err := strconv.ParseUint(stats["term"], 10, 64); err == nil {
		gauge(descTerm, float64(t))
	}
	gauge(descCommit, float64(rf.CommitIndex()))
	if s.node.IsLeader() {
		gauge(descContact, 0)
	} else if lc := rf.LastContact(); !lc.IsZero() {
		gauge(descContact, wallclock.Since(lc).Seconds()) // Raft's own real-time contact
	}
	r := s.fsm.Read()
	gauge(descApplied, float64(r.AppliedIndex()))
	gauge(descLedger, float64(r.LedgerLen()))
	gauge(descQueue, float64(s.admission.QueueDepth()))
	gauge(descNodes, float64(len(r.Nodes())))
	gauge(descEntries, float64(len(r.Entries())))
	for _, a := range r.Authorities() {
		kind := "root"
		if a.Kind == raftpb.AuthorityKind_INTERMEDIATE {
			kind = "intermediate"
		}
		gauge(descNotAfter, float64(a.NotAfterUnix), a.Id, kind, a.Profile, a.State.String(), a.ServerId)
		if crl := r.CRL(a.Id); crl != nil {
			gauge(descCRLNext, float64(crl.NextUpdateUnix), a.Id)
		}
	}
	for _, k := range r.JWTKeys() {
		gauge(descJWTNotAfter, float64(k.NotAfterUnix), k.Kid, k.State.String())
	}
	gauge(descPolicyRev, float64(r.IssuancePolicy().GetRevision()))
	for _, b := range r.OPABundleNames() {
		gauge(descBundleRev, float64(b.Revision), b.Name)
	}
}
