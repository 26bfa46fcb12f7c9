package tunnel

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	conns      *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	active     *prometheus.GaugeVec
	duration   *prometheus.HistogramVec
	sdsUpdates *prometheus.CounterVec
	rotations  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_tunnel_connections_total",
			Help: "Connections by listener, direction and result (allowed, denied, not_ready, handshake_failed, dial_failed)."},
			[]string{"listener", "direction", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_tunnel_bytes_total",
			Help: "Bytes forwarded by closed connections, up (client to target) and down."}, []string{"listener", "way"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshca_tunnel_active_connections",
			Help: "Open forwarded connections."}, []string{"listener", "direction"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshca_tunnel_connection_duration_seconds",
			Help: "Lifetime of allowed connections.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"listener", "direction"}),
		sdsUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshca_tunnel_sds_updates_total",
			Help: "SDS responses by secret name and result (ack, nack)."}, []string{"name", "result"}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshca_tunnel_certificates_total",
			Help: "Certificates taken into use (the first and every rotation)."}),
	}
	for _, c := range []prometheus.Collector{m.conns, m.bytes, m.active, m.duration, m.sdsUpdates, m.rotations} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("tunnel: metrics: %w", err)
		}
	}
	return m, nil
}
