package agent

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// Renewal outcomes, the result label of meshca_agent_svid_renewals_total.
const (
	renewOK      = "ok"      // signed and installed
	renewRefused = "refused" // the server refused the CSR
	renewFailed  = "failed"  // the call failed (retried) or the SVID was unusable
)

// agentMetrics are the events an agent counts as they happen; its state
// (SVIDs held, streams open, SDS counters) is read at scrape time.
type agentMetrics struct {
	renewals *prometheus.CounterVec // result
	syncs    prometheus.Counter
	// streams open now on the socket, by API (workload, sds).
	workloadStreams, sdsStreams atomic.Int64
	connected                   atomic.Bool
}

func newAgentMetrics(reg prometheus.Registerer, a *Agent) *agentMetrics {
	ns, sub := metrics.Namespace, "agent"
	m := &agentMetrics{
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "svid_renewals_total",
			Help: "Workload X509-SVIDs the agent asked the servers for (first issuance and renewals), by result (ok, refused, failed)."},
			[]string{"result"}),
		syncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sync_updates_total",
			Help: "Updates received on the Sync stream from the servers (entries, bundles, CRLs)."}),
	}
	reg.MustRegister(m.renewals, m.syncs, &agentCollector{a: a})
	for _, r := range []string{renewOK, renewRefused, renewFailed} {
		m.renewals.WithLabelValues(r) // every series from the start, at zero
	}
	return m
}

// streamCounter counts the open streams of the Workload API and SDS.
func (m *agentMetrics) streamCounter(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	c := &m.workloadStreams
	if strings.HasPrefix(info.FullMethod, "/envoy.service.secret.") {
		c = &m.sdsStreams
	}
	c.Add(1)
	defer c.Add(-1)
	return handler(srv, ss)
}

type agentCollector struct{ a *Agent }

var (
	descSVIDs         = prometheus.NewDesc("meshca_agent_svids", "Workload X509-SVIDs the agent holds, valid now.", nil, nil)
	descEntries       = prometheus.NewDesc("meshca_agent_entries", "Registration entries the servers gave this agent.", nil, nil)
	descEarliest      = prometheus.NewDesc("meshca_agent_svid_earliest_expiry_timestamp_seconds", "When the first of the held workload SVIDs expires (Unix seconds); absent with none.", nil, nil)
	descAgentNotAfter = prometheus.NewDesc("meshca_agent_identity_not_after_timestamp_seconds", "When the agent's own SVID expires (Unix seconds); absent before attestation.", nil, nil)
	descConnected     = prometheus.NewDesc("meshca_agent_server_connected", "1 while the agent has a Sync stream to a server.", nil, nil)
	descSynced        = prometheus.NewDesc("meshca_agent_synced", "1 once the agent has received its entries from a server since it started.", nil, nil)
	descStreams       = prometheus.NewDesc("meshca_agent_streams", "Streams open now on the agent's socket, by API (workload: the SPIFFE Workload API; sds: Envoy SDS).", []string{"api"}, nil)
	descSDSResponses  = prometheus.NewDesc("meshca_agent_sds_responses_total", "SDS responses sent (pushes and fetches).", nil, nil)
	descSDSNACKs      = prometheus.NewDesc("meshca_agent_sds_nacks_total", "SDS responses a proxy rejected (NACK, with error_detail).", nil, nil)
	descSDSRefusals   = prometheus.NewDesc("meshca_agent_sds_refusals_total", "SDS resource names refused to a caller (no entry gives them).", nil, nil)
	descSDSErrors     = prometheus.NewDesc("meshca_agent_sds_source_errors_total", "Errors reading secrets while pushing SDS updates.", nil, nil)
)

// Describe sends the descriptors.
func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSVIDs, descEntries, descEarliest, descAgentNotAfter, descConnected, descSynced,
		descStreams, descSDSResponses, descSDSNACKs, descSDSRefusals, descSDSErrors} {
		ch <- d
	}
}

// Collect reads the agent's state.
func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	now := a.cfg.Clock.Now()
	valid, entries, earliest := a.store.stats(now)
	gauge(descSVIDs, float64(valid))
	gauge(descEntries, float64(entries))
	if !earliest.IsZero() {
		gauge(descEarliest, float64(earliest.Unix()))
	}
	if svid, err := a.id.GetX509SVID(); err == nil && len(svid.Certificates) > 0 {
		gauge(descAgentNotAfter, float64(svid.Certificates[0].NotAfter.Unix()))
	}
	gauge(descConnected, boolValue(a.metrics.connected.Load()))
	gauge(descSynced, boolValue(a.synced.Load()))
	gauge(descStreams, float64(a.metrics.workloadStreams.Load()), "workload")
	gauge(descStreams, float64(a.metrics.sdsStreams.Load()), "sds")
	st := a.sds.Stats()
	counter(descSDSResponses, st.Responses)
	counter(descSDSNACKs, st.NACKs)
	counter(descSDSRefusals, st.Refusals)
	counter(descSDSErrors, st.SourceErrors)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Readiness reports whether the agent does its work now: it has an
// identity (attested), it has received its entries from a server since it
// started (synced), and it serves its socket. An agent that loses its
// servers afterwards stays ready: it serves its cached SVIDs.
func (a *Agent) Readiness(context.Context) (bool, string) {
	if _, err := a.id.GetX509SVID(); err != nil {
		return false, "the agent is not attested yet: " + err.Error()
	}
	if !a.synced.Load() {
		return false, "the agent has not received its entries from a server yet"
	}
	if !a.serving.Load() {
		return false, "the agent is not serving its socket"
	}
	return true, ""
}

// stats returns the valid SVIDs held at now, the entries, and the
// earliest expiry of the held SVIDs (zero with none).
func (s *store) stats(now time.Time) (valid, entries int, earliest time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.entries {
		v, ok := s.svids[id]
		if !ok || !now.Before(v.notAfter) {
			continue
		}
		valid++
		if earliest.IsZero() || v.notAfter.Before(earliest) {
			earliest = v.notAfter
		}
	}
	return valid, len(s.entries), earliest
}
