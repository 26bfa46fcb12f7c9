package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/pgtest"
	"github.com/meshca/meshca/proto/raftpb"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openT(t *testing.T) (*Store, string) {
	t.Helper()
	dsn := pgtest.Shared(t).Database(t)
	s, err := Open(ctxT(t), Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// block makes a ledger block of n records at index.
func block(index uint64, n int, spiffe, node string) *raftpb.LedgerBlock {
	b := &raftpb.LedgerBlock{Index: index}
	for i := 0; i < n; i++ {
		b.Records = append(b.Records, &raftpb.LedgerRecord{Serial: []byte(fmt.Sprintf("s-%d-%d", index, i)), SpiffeId: spiffe, NodeId: node,
			Profile: "ecdsa", IssuerId: "ecdsa/intermediate/01", NotBeforeUnix: t0.Unix() + int64(index), NotAfterUnix: t0.Unix() + int64(index) + 3600})
	}
	return b
}

// Migrations apply once; a second Open changes nothing; a database with a
// newer schema is refused and left as it is.
func TestMigrations(t *testing.T) {
	s, dsn := openT(t)
	ctx := ctxT(t)
	s2, err := Open(ctx, Config{DSN: dsn})
	if err != nil {
		t.Fatalf("second open: %v", err)
	}
	s2.Close()
	var n, v int
	if err := s.pool.QueryRow(ctx, "SELECT count(*), max(version) FROM meshca_schema").Scan(&n, &v); err != nil || n != SchemaVersion() || v != SchemaVersion() {
		t.Fatalf("schema rows %d version %d err %v, want %d", n, v, err, SchemaVersion())
	}
	if _, err := s.pool.Exec(ctx, "INSERT INTO meshca_schema (version, name) VALUES ($1, 'from_the_future.sql')", SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, Config{DSN: dsn})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("newer schema: %v, want ErrSchemaTooNew", err)
	}
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM meshca_schema").Scan(&n); err != nil || n != SchemaVersion()+1 {
		t.Fatalf("refused open changed the schema table: %d rows, %v", n, err)
	}
}

// Concurrent servers starting on a new database migrate it once.
func TestMigrateConcurrently(t *testing.T) {
	dsn := pgtest.Shared(t).Database(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctx, Config{DSN: dsn})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestLedgerExportExactlyOnce(t *testing.T) {
	s, _ := openT(t)
	ctx := ctxT(t)
	if c, _, err := s.LedgerCursor(ctx); err != nil || c != 0 {
		t.Fatalf("new cursor %d %v", c, err)
	}
	if n, err := s.ExportLedger(ctx, 0, []*raftpb.LedgerBlock{block(5, 3, "spiffe://td/a", "n1"), block(9, 2, "spiffe://td/b", "n2")}, t0); err != nil || n != 5 {
		t.Fatalf("export: %d %v", n, err)
	}
	// A replay from the old cursor (an exporter that crashed before it
	// learned of its commit, or a former leader) writes nothing.
	_, err := s.ExportLedger(ctx, 0, []*raftpb.LedgerBlock{block(5, 3, "spiffe://td/a", "n1")}, t0)
	var cm *CursorMovedError
	if !errors.As(err, &cm) || cm.Have != 9 || cm.Want != 0 {
		t.Fatalf("replay: %v, want cursor moved to 9", err)
	}
	// Out of order is refused before anything is written.
	if _, err := s.ExportLedger(ctx, 9, []*raftpb.LedgerBlock{block(9, 1, "x", "")}, t0); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("out of order: %v", err)
	}
	if _, err := s.ExportLedger(ctx, 9, []*raftpb.LedgerBlock{block(12, 1, "spiffe://td/a", "n1")}, t0); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.CountCertificates(ctx); n != 6 {
		t.Fatalf("%d rows, want 6", n)
	}
	c, at, err := s.LedgerCursor(ctx)
	if err != nil || c != 12 || !at.Equal(t0) {
		t.Fatalf("cursor %d at %v %v", c, at, err)
	}
	// Filters and pages.
	got, next, err := s.ListCertificates(ctx, CertFilter{SPIFFEID: "spiffe://td/a", Limit: 2})
	if err != nil || len(got) != 2 || next == "" || got[0].RaftIndex != 5 || got[0].Position != 0 {
		t.Fatalf("page 1: %+v %q %v", got, next, err)
	}
	got2, next2, err := s.ListCertificates(ctx, CertFilter{SPIFFEID: "spiffe://td/a", Limit: 2, PageToken: next})
	if err != nil || len(got2) != 2 || next2 != "" || got2[1].RaftIndex != 12 {
		t.Fatalf("page 2: %+v %q %v", got2, next2, err)
	}
	if got, _, _ := s.ListCertificates(ctx, CertFilter{NodeID: "n2"}); len(got) != 2 || got[0].SPIFFEID != "spiffe://td/b" {
		t.Fatalf("by node: %+v", got)
	}
	if got, _, _ := s.ListCertificates(ctx, CertFilter{Since: t0.Add(9 * time.Second), Until: t0.Add(12 * time.Second)}); len(got) != 2 {
		t.Fatalf("since/until: %+v", got)
	}
	if _, err := s.pool.Exec(ctx, "UPDATE certificates SET revoked_at = $1, revocation_reason = 1 WHERE raft_index = 9 AND position = 1", t0); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.ListCertificates(ctx, CertFilter{Revoked: true}); len(got) != 1 || *got[0].RevocationReason != 1 {
		t.Fatalf("revoked: %+v", got)
	}
	if _, _, err := s.ListCertificates(ctx, CertFilter{PageToken: "nope"}); !errors.Is(err, ErrBadPageToken) {
		t.Fatalf("bad token: %v", err)
	}
}

// Two exporters racing from the same cursor: exactly one batch lands.
func TestLedgerExportersRace(t *testing.T) {
	s, _ := openT(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.ExportLedger(ctx, 0, []*raftpb.LedgerBlock{block(3, 100, "spiffe://td/a", "")}, t0)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var cm *CursorMovedError
		switch {
		case err == nil:
			ok++
		case !errors.As(err, &cm):
			t.Fatalf("unexpected: %v", err)
		}
	}
	if n, _ := s.CountCertificates(ctx); ok != 1 || n != 100 {
		t.Fatalf("%d exports succeeded, %d rows; want 1 and 100", ok, n)
	}
}

func events(from, to uint64, actor string, d audit.Decision) []audit.Event {
	var out []audit.Event
	for s := from; s <= to; s++ {
		out = append(out, audit.Event{Time: t0.Add(time.Duration(s) * time.Second), Source: "s1", Seq: s, Actor: actor, Action: "x509.sign",
			Subject: "spiffe://td/w", Decision: d, Reason: "r", Details: map[string]string{"serial": fmt.Sprint(s)}})
	}
	return out
}

func TestAuditExport(t *testing.T) {
	s, _ := openT(t)
	ctx := ctxT(t)
	if err := s.ExportAudit(ctx, "s1", 0, events(1, 3, "spiffe://td/agent", audit.Deny), nil, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.ExportAudit(ctx, "s2", 0, events(1, 2, "operator", audit.Allow), func(e audit.Event) bool { return e.Actor == "operator" }, t0); err != nil {
		t.Fatal(err)
	}
	var cm *CursorMovedError
	if err := s.ExportAudit(ctx, "s1", 2, events(3, 3, "a", audit.Deny), nil, t0); !errors.As(err, &cm) || cm.Have != 3 {
		t.Fatalf("stale cursor: %v", err)
	}
	if c, err := s.AuditCursor(ctx, "s1"); err != nil || c != 3 {
		t.Fatalf("cursor s1 %d %v", c, err)
	}
	if c, err := s.AuditCursor(ctx, "unknown"); err != nil || c != 0 {
		t.Fatalf("cursor unknown %d %v", c, err)
	}
	all, _, err := s.ListAudit(ctx, AuditFilter{})
	if err != nil || len(all) != 5 {
		t.Fatalf("all: %d %v", len(all), err)
	}
	deny, _, _ := s.ListAudit(ctx, AuditFilter{Decision: "deny", Actor: "spiffe://td/agent", Action: "x509.sign"})
	if len(deny) != 3 || deny[0].Reason != "r" || deny[0].Details["serial"] != "1" || deny[0].Server != "s1" {
		t.Fatalf("denials: %+v", deny)
	}
	ops, _, _ := s.ListAudit(ctx, AuditFilter{Operator: true})
	if len(ops) != 2 || !ops[0].Operator {
		t.Fatalf("operator: %+v", ops)
	}
	var view int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM operator_actions").Scan(&view); err != nil || view != 2 {
		t.Fatalf("operator_actions view: %d %v", view, err)
	}
	// Pages of 2 walk all 5 in order, none twice.
	seen := map[string]bool{}
	tok := ""
	for pages := 0; ; pages++ {
		page, next, err := s.ListAudit(ctx, AuditFilter{Limit: 2, PageToken: tok})
		if err != nil || pages > 3 {
			t.Fatalf("paging: %v after %d pages", err, pages)
		}
		for _, e := range page {
			k := fmt.Sprint(e.Server, e.Seq)
			if seen[k] {
				t.Fatalf("%s twice", k)
			}
			seen[k] = true
		}
		if tok = next; tok == "" {
			break
		}
	}
	if len(seen) != 5 {
		t.Fatalf("paged %d events", len(seen))
	}
	since, _, _ := s.ListAudit(ctx, AuditFilter{Since: t0.Add(2 * time.Second), Until: t0.Add(3 * time.Second)})
	if len(since) != 2 { // s1/2 and s2/2
		t.Fatalf("since/until: %+v", since)
	}
}

func TestPrune(t *testing.T) {
	s, _ := openT(t)
	ctx := ctxT(t)
	var blocks []*raftpb.LedgerBlock
	for i := uint64(1); i <= 50; i++ {
		blocks = append(blocks, block(i, 10, "spiffe://td/a", ""))
	}
	if _, err := s.ExportLedger(ctx, 0, blocks, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.ExportAudit(ctx, "s1", 0, events(1, 40, "a", audit.Allow), nil, t0); err != nil {
		t.Fatal(err)
	}
	// Records of blocks 1..20 expire before t0+3600+21s; events 1..29 are before t0+30s.
	certs, evs, err := s.Prune(ctx, t0.Add(3621*time.Second), t0.Add(30*time.Second), 7)
	if err != nil || certs != 200 || evs != 29 {
		t.Fatalf("pruned %d certificates, %d events, %v; want 200, 29", certs, evs, err)
	}
	if n, _ := s.CountCertificates(ctx); n != 300 {
		t.Fatalf("%d left", n)
	}
}

// A wrong password is a clear error naming the role, never the password.
func TestWrongPassword(t *testing.T) {
	pg := pgtest.Shared(t)
	good := pg.Database(t)
	const secret = "not-the-Password-42"
	bad := strings.Replace(good, ":pw-", ":"+secret+"-", 1)
	_, err := Open(ctxT(t), Config{DSN: bad})
	var ae *AuthError
	if !errors.As(err, &ae) || !IsAuth(err) {
		t.Fatalf("wrong password: %v, want an AuthError", err)
	}
	if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), `role "meshca_`) {
		t.Fatalf("error %q: want the role named and the password absent", err)
	}
}

// A database that does not answer is an error of the call (the pool is
// created without connecting), not an AuthError.
func TestUnreachable(t *testing.T) {
	s, err := New(Config{DSN: "postgres://meshca:secret-pw@127.0.0.1:1/meshca?sslmode=disable&connect_timeout=2"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Ping(ctxT(t))
	if err == nil || IsAuth(err) || strings.Contains(err.Error(), "secret-pw") {
		t.Fatalf("unreachable: %v", err)
	}
}

func TestMalformedDSN(t *testing.T) {
	for _, dsn := range []string{"", "postgres://u:hunter2@host:notaport/db", "host=x port=abc password=hunter2", "postgres://u:hunter2@h/db?sslmode=bogus"} {
		_, err := New(Config{DSN: dsn})
		if !errors.Is(err, ErrMalformedDSN) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: %v", dsn, err)
		}
	}
	// A CA file needs a verifying sslmode, and a real PEM file.
	if _, err := New(Config{DSN: "postgres://u@h/db?sslmode=disable", CAFile: "/nonexistent"}); !errors.Is(err, ErrMalformedDSN) {
		t.Errorf("CA file without verify: %v", err)
	}
	if _, err := New(Config{DSN: "postgres://u@h/db?sslmode=verify-full", CAFile: "/nonexistent"}); !errors.Is(err, ErrMalformedDSN) {
		t.Errorf("missing CA file: %v", err)
	}
}

// BenchmarkExportLedger measures the ledger export: COPY of ledger blocks
// of 500 records (a group commit under load), 10 blocks per transaction
// (server.DefaultExportBatch records), with the cursor checked and moved
// in the same transaction. It is also the catch-up rate after an outage:
// the exporter sends batch after batch without waiting while it lags.
//
//	go test ./store/postgres -run '^$' -bench ExportLedger -benchtime 200000x -count 3
func BenchmarkExportLedger(b *testing.B) {
	benchExport(b, pgtest.Shared(b).Database(b))
}

func benchExport(b *testing.B, dsn string) {
	ctx := context.Background()
	s, err := Open(ctx, Config{DSN: dsn})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const perBlock, perTx = 500, 10
	mk := func(index uint64) *raftpb.LedgerBlock {
		blk := &raftpb.LedgerBlock{Index: index}
		for i := 0; i < perBlock; i++ {
			serial := make([]byte, 16)
			binary.BigEndian.PutUint64(serial, index)
			binary.BigEndian.PutUint64(serial[8:], uint64(i))
			blk.Records = append(blk.Records, &raftpb.LedgerRecord{Serial: serial, SpiffeId: fmt.Sprintf("spiffe://example.org/ns/prod/sa/w%d", i%1000),
				NodeId: fmt.Sprintf("spiffe://example.org/meshca/agent/join_token/%032d", i%100), Profile: "ecdsa",
				IssuerId: "ecdsa/intermediate/9494696c78fec82870cc3f79324f16d0", NotBeforeUnix: t0.Unix(), NotAfterUnix: t0.Unix() + 86400})
		}
		return blk
	}
	var cursor uint64
	b.ResetTimer()
	for done := 0; done < b.N; done += perBlock * perTx {
		b.StopTimer()
		blocks := make([]*raftpb.LedgerBlock, perTx)
		for i := range blocks {
			blocks[i] = mk(cursor + uint64(i) + 1)
		}
		b.StartTimer()
		if _, err := s.ExportLedger(ctx, cursor, blocks, t0); err != nil {
			b.Fatal(err)
		}
		cursor += perTx
	}
	b.StopTimer()
	b.ReportMetric(float64(cursor*perBlock)/b.Elapsed().Seconds(), "records/s")
}
