package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// historyCollector reports the history export's lag at scrape time, from
// the same view as Status (see historyStatus).
type historyCollector struct{ s *Server }

var (
	descHistoryLedgerLag = prometheus.NewDesc("meshca_history_ledger_lag_records",
		"Ledger records committed and not yet exported to PostgreSQL (as this server sees the cursor).", nil, nil)
	descHistoryLedgerLagSeconds = prometheus.NewDesc("meshca_history_ledger_lag_seconds",
		"Age of the oldest ledger record not yet exported to PostgreSQL (0 when none).", nil, nil)
	descHistoryAuditLag = prometheus.NewDesc("meshca_history_audit_lag_events",
		"This server's audit events recorded and not yet exported to PostgreSQL.", nil, nil)
	descHistoryAuditLagSeconds = prometheus.NewDesc("meshca_history_audit_lag_seconds",
		"Age of this server's oldest audit event not yet exported (0 when none).", nil, nil)
	descHistoryExporter = prometheus.NewDesc("meshca_history_ledger_exporter",
		"1 if this server exports the ledger (it is the leader).", nil, nil)
	descHistoryFailing = prometheus.NewDesc("meshca_history_export_failing",
		"1 while the export's last attempt failed (PostgreSQL unreachable, refused, ...).", nil, nil)
	descHistoryUnexported = prometheus.NewDesc("meshca_history_unexported_pruned_records_total",
		"Ledger records this server, as leader, pruned before PostgreSQL had them (the export lagged past the hold).", nil, nil)
)

// Describe sends the descriptors.
func (c *historyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHistoryLedgerLag, descHistoryLedgerLagSeconds, descHistoryAuditLag, descHistoryAuditLagSeconds,
		descHistoryExporter, descHistoryFailing, descHistoryUnexported} {
		ch <- d
	}
}

// Collect reads the export's state.
func (c *historyCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h := c.s.historyStatus(ctx)
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge(descHistoryLedgerLag, float64(h.LedgerLagRecords))
	gauge(descHistoryLedgerLagSeconds, h.LedgerLagSeconds)
	gauge(descHistoryAuditLag, float64(h.AuditLagEvents))
	gauge(descHistoryAuditLagSeconds, h.AuditLagSeconds)
	gauge(descHistoryExporter, b(h.LedgerExporter))
	gauge(descHistoryFailing, b(h.LastError != ""))
	ch <- prometheus.MustNewConstMetric(descHistoryUnexported, prometheus.CounterValue, float64(h.UnexportedPruned))
}
