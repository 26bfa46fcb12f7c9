package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/store/postgres"
	"github.com/spf13/pflag"
)

// envPostgresDSN is the environment variable holding the history
// database's DSN: unlike a flag, other users of the host cannot read it in
// the process list.
const envPostgresDSN = "MESHCA_POSTGRES_DSN"

const historyHelp = `

History in PostgreSQL: with a DSN (--postgres-dsn, postgres_dsn in the
file, or $MESHCA_POSTGRES_DSN, preferred: a flag shows in the process
list), every certificate the cluster issues is exported from the Raft ledger
by the leader, and every server exports its own audit log, exactly once, to
that database (schema migrated at start; a database with a newer schema is
refused). Issuing never waits for PostgreSQL: when it is unreachable the
server starts anyway, warns, and meshca status shows the export's lag; it
catches up when the database returns. A refused password stops the start
with an error naming the role (never the password). TLS: sslmode=verify-full
in the DSN, with --postgres-ca-file F (postgres_ca_file) or sslrootcert.
--history-retention D (history_retention) deletes certificates expired, and
audit events recorded, longer than D ago (default: keep everything);
--export-hold D (export_hold, default 168h) is how long the ledger keeps
expired records PostgreSQL has not taken yet before pruning them anyway.`

// addHistoryFlags adds the history database's flags to a server command.
func addHistoryFlags(f *pflag.FlagSet, c *serverConfig) {
	f.StringVar(&c.PostgresDSN, "postgres-dsn", "", "PostgreSQL DSN of the history database, postgres://user:password@host:port/db?sslmode=verify-full (default $"+envPostgresDSN+"; the environment keeps the password out of the process list)")
	f.StringVar(&c.PostgresCAFile, "postgres-ca-file", "", "PEM file of the CAs of PostgreSQL's server certificate (with sslmode=verify-ca or verify-full)")
	f.Var((*durationText)(&c.HistoryRetention), "history-retention", "delete history rows older than this (certificates: since they expired), e.g. 8760h (default: keep everything)")
	f.Var((*durationText)(&c.ExportHold), "export-hold", "how long the ledger keeps expired records PostgreSQL has not taken yet (default 168h)")
}

// overrideHistory sets the history settings whose flags were given.
func (c *serverConfig) overrideHistory(fs *pflag.FlagSet, f *serverConfig) {
	for name, p := range map[string][2]*string{
		"postgres-dsn":      {&c.PostgresDSN, &f.PostgresDSN},
		"postgres-ca-file":  {&c.PostgresCAFile, &f.PostgresCAFile},
		"history-retention": {&c.HistoryRetention, &f.HistoryRetention},
		"export-hold":       {&c.ExportHold, &f.ExportHold},
	} {
		if fs.Changed(name) {
			*p[0] = *p[1]
		}
	}
}

// historySettings is what a server is given for its history database.
type historySettings struct {
	store     *postgres.Store
	retention time.Duration
	hold      time.Duration
}

// history opens (without connecting) the history database c configures,
// if any: a malformed DSN or duration is a usage error, whose message never
// holds the password.
func (a *app) history(c *serverConfig) (historySettings, error) {
	var h historySettings
	dsn := c.PostgresDSN
	if dsn == "" {
		dsn = a.getenv(envPostgresDSN)
	}
	for _, d := range []struct {
		key, value string
		to         *time.Duration
	}{{"history_retention", c.HistoryRetention, &h.retention}, {"export_hold", c.ExportHold, &h.hold}} {
		if d.value == "" {
			continue
		}
		v, err := time.ParseDuration(d.value)
		if err != nil || v <= 0 {
			return h, usageErrorf("%s %q: want a positive duration, e.g. 8760h", d.key, d.value)
		}
		*d.to = v
	}
	if dsn == "" {
		if c.PostgresCAFile != "" || c.HistoryRetention != "" || c.ExportHold != "" {
			return h, usageErrorf("--postgres-ca-file, --history-retention and --export-hold need a history database: --postgres-dsn or $%s", envPostgresDSN)
		}
		return h, nil
	}
	st, err := postgres.New(postgres.Config{DSN: dsn, CAFile: c.PostgresCAFile})
	if errors.Is(err, postgres.ErrMalformedDSN) {
		return h, usageErrorf("history database (--postgres-dsn or $%s): %v", envPostgresDSN, err)
	}
	if err != nil {
		return h, fmt.Errorf("history database: %w", err)
	}
	h.store = st
	return h, nil
}

// historyReport is the history export part of status; the JSON field
// names are those of the operator API's HistoryExport.
type historyReport struct {
	Database         string  `json:"database"`
	LedgerExporter   bool    `json:"ledger_exporter"`
	LedgerCursor     uint64  `json:"ledger_cursor"`
	LedgerLagRecords uint64  `json:"ledger_lag_records"`
	LedgerLagSeconds float64 `json:"ledger_lag_seconds"`
	AuditCursor      uint64  `json:"audit_cursor"`
	AuditLagEvents   uint64  `json:"audit_lag_events"`
	AuditLagSeconds  float64 `json:"audit_lag_seconds"`
	LastError        string  `json:"last_error,omitempty"`
	UnexportedPruned uint64  `json:"unexported_pruned,omitempty"`
}

func newHistoryReport(h *operatorpb.HistoryExport) *historyReport {
	if !h.GetEnabled() {
		return nil
	}
	return &historyReport{Database: h.Database, LedgerExporter: h.LedgerExporter, LedgerCursor: h.LedgerCursor,
		LedgerLagRecords: h.LedgerLagRecords, LedgerLagSeconds: h.LedgerLagSeconds, AuditCursor: h.AuditCursor,
		AuditLagEvents: h.AuditLagEvents, AuditLagSeconds: h.AuditLagSeconds, LastError: h.LastError, UnexportedPruned: h.UnexportedPruned}
}

func (h *historyReport) rows(t *table) {
	if h == nil {
		t.row("history", "no database configured")
		return
	}
	role := "follower: the leader exports the ledger"
	if h.LedgerExporter {
		role = "this server exports the ledger"
	}
	t.row("history database", h.Database+" ("+role+")")
	t.row("ledger export", fmt.Sprintf("cursor %d; lag %d records, %.1fs", h.LedgerCursor, h.LedgerLagRecords, h.LedgerLagSeconds))
	t.row("audit export", fmt.Sprintf("cursor %d; lag %d events, %.1fs", h.AuditCursor, h.AuditLagEvents, h.AuditLagSeconds))
	if h.LastError != "" {
		t.row("export error", h.LastError)
	}
	if h.UnexportedPruned > 0 {
		t.row("pruned unexported", fmt.Sprintf("%d ledger records (the export lagged past the hold)", h.UnexportedPruned))
	}
}
