package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/pgtest"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/server"
	"github.com/meshca/meshca/store/postgres"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// historyFleet is a fleet whose servers export to the PostgreSQL database
// dsn, each through its own pool (as separate processes would).
func historyFleet(t *testing.T, servers int, dsn string) *fleet {
	t.Helper()
	return newFleet(t, fleetOpts{servers: servers, clock: clockwork.NewRealClock(), tune: func(c *server.Config) {
		st, err := postgres.New(postgres.Config{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		c.History, c.ExportInterval = st, 20*time.Millisecond
		c.HTTPAddr = "127.0.0.1:0" // the lag metrics
		// The load below comes from the operator, not from many nodes.
		c.NodeSignRate, c.NodeSignBurst = 1e6, 1e6
	}})
}

// mintLoad mints X509-SVIDs through every server's operator API, workers
// at a time, until n are issued or stop is closed; it returns the serials.
type mintLoad struct {
	mu      sync.Mutex
	serials map[string]bool
	failed  atomic.Int64
}

func (l *mintLoad) run(t *testing.T, f *fleet, n, workers int, stop <-chan struct{}) {
	t.Helper()
	if l.serials == nil {
		l.serials = map[string]bool{}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		m := f.members[w%len(f.members)]
		op := operatorClient(t, m.srv.AdminSocket())
		key, err := ca.ECDSA.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := ca.ECDSA.CreateCSR(key)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				resp, err := op.MintX509SVID(ctx, &operatorpb.MintX509SVIDRequest{SpiffeId: fmt.Sprintf("spiffe://example.org/history/w%d", i%50), Csr: csr})
				cancel()
				if err != nil {
					l.failed.Add(1)
					next.Add(-1) // try that one again
					continue
				}
				leaf, err := ca.ECDSA.ParseCertificate(resp.Chain[0])
				if err != nil {
					t.Error(err)
					return
				}
				l.mu.Lock()
				l.serials[string(leaf.SerialNumber.Bytes())] = true
				l.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// ledgerSerials returns the serials in the leader's ledger.
func ledgerSerials(t *testing.T, f *fleet) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	// A loaded machine may be between leaders: wait for one.
	waitFor(t, 20*time.Second, "a leader", func() error {
		for _, m := range f.running() {
			if !m.srv.Node().IsLeader() {
				continue
			}
			for _, b := range m.srv.Node().FSM().Read().LedgerBlocksAfter(0, 1<<62) {
				for _, r := range b.Records {
					out[string(r.Serial)] = true
				}
			}
			return nil
		}
		return errors.New("no leader")
	})
	return out
}

// pgSerials returns the serials PostgreSQL holds, failing on a duplicate.
func pgSerials(t *testing.T, st *postgres.Store) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	rows, err := st.Pool().Query(tctx(t, 60*time.Second), "SELECT serial FROM certificates")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s []byte
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		if out[string(s)] {
			t.Fatalf("serial %x twice in PostgreSQL", s)
		}
		out[string(s)] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitExported waits until every running server reports no export lag
// (ledger and its own audit log) and no error.
func waitExported(t *testing.T, f *fleet, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "export caught up", func() error {
		for _, m := range f.running() {
			st, err := operatorClient(t, m.srv.AdminSocket()).Status(tctx(t, 10*time.Second), &operatorpb.StatusRequest{})
			if err != nil {
				return err
			}
			h := st.History
			if h.LedgerLagRecords != 0 || h.AuditLagEvents != 0 || h.LastError != "" {
				return fmt.Errorf("%s: ledger lag %d, audit lag %d, error %q", m.cfg.NodeID, h.LedgerLagRecords, h.AuditLagEvents, h.LastError)
			}
		}
		return nil
	})
}

// sameSerials fails unless PostgreSQL holds exactly the ledger's serials,
// and all of want.
func sameSerials(t *testing.T, f *fleet, st *postgres.Store, want map[string]bool) {
	t.Helper()
	led, pg := ledgerSerials(t, f), pgSerials(t, st)
	missing, extra := 0, 0
	for s := range led {
		if !pg[s] {
			missing++
		}
	}
	for s := range pg {
		if !led[s] {
			extra++
		}
	}
	notIssued := 0
	for s := range want {
		if !pg[s] {
			notIssued++
		}
	}
	if missing+extra+notIssued > 0 {
		t.Fatalf("ledger %d serials, PostgreSQL %d: %d missing from PostgreSQL, %d not in the ledger; %d of %d minted not in PostgreSQL",
			len(led), len(pg), missing, extra, notIssued, len(want))
	}
}

// Issue 10,000 certificates across a 3-server cluster: PostgreSQL has
// exactly one row per ledger record, the 10,000 among them, and every
// server's audit log is exported whole.
func TestHistoryTenThousandCertificates(t *testing.T) {
	if testing.Short() {
		t.Skip("issues 10,000 certificates")
	}
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	f := historyFleet(t, 3, dsn)
	st, err := postgres.Open(tctx(t, 30*time.Second), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	load := &mintLoad{}
	start := time.Now()
	load.run(t, f, 10000, 12, nil)
	t.Logf("minted %d certificates in %s (%d failed attempts retried)", len(load.serials), time.Since(start).Round(time.Millisecond), load.failed.Load())
	if len(load.serials) != 10000 {
		t.Fatalf("minted %d distinct serials", len(load.serials))
	}
	waitExported(t, f, 60*time.Second)
	sameSerials(t, f, st, load.serials)
	var minted int
	if err := st.Pool().QueryRow(tctx(t, 10*time.Second), "SELECT count(*) FROM certificates WHERE node_id = 'operator' AND spiffe_id LIKE 'spiffe://example.org/history/%'").Scan(&minted); err != nil || minted != 10000 {
		t.Fatalf("%d minted rows, %v", minted, err)
	}
	// Every server's audit log, whole and once, with its 10,000 allows.
	for _, m := range f.members {
		var n, maxSeq int64
		if err := st.Pool().QueryRow(tctx(t, 10*time.Second), "SELECT count(*), coalesce(max(seq), 0) FROM audit_events WHERE server = $1", m.cfg.NodeID).Scan(&n, &maxSeq); err != nil {
			t.Fatal(err)
		}
		if n == 0 || n != maxSeq {
			t.Errorf("%s: %d events exported, up to seq %d: want all, without a gap", m.cfg.NodeID, n, maxSeq)
		}
	}
	var allows int
	if err := st.Pool().QueryRow(tctx(t, 10*time.Second), "SELECT count(*) FROM audit_events WHERE action = $1 AND decision = 'allow' AND subject LIKE 'spiffe://example.org/history/%'",
		"x509.mint").Scan(&allows); err != nil || allows != 10000 {
		t.Fatalf("%d mint allows in the audit history, %v; want 10000", allows, err)
	}
}

// Kill PostgreSQL mid-export and keep issuing: issuance goes on, the
// lag shows; restarted, the export catches up with no gap and no duplicate.
func TestHistoryPostgresKilled(t *testing.T) {
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	f := historyFleet(t, 3, dsn)
	st, err := postgres.Open(tctx(t, 30*time.Second), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	load := &mintLoad{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { load.run(t, f, 3000, 6, stop); close(done) }()
	// Kill it while the export is under way: once some rows are in.
	waitFor(t, 60*time.Second, "rows exported", func() error {
		n, err := st.CountCertificates(tctx(t, 5*time.Second))
		if err != nil || n < 200 {
			return fmt.Errorf("%d rows, %v", n, err)
		}
		return nil
	})
	pg.Kill()
	killedAt := len(snapshot(load))
	// Issuance goes on without PostgreSQL, and the lag shows.
	waitFor(t, 60*time.Second, "issuance while PostgreSQL is down", func() error {
		if n := len(snapshot(load)); n < killedAt+300 {
			return fmt.Errorf("%d minted, %d at the kill", n, killedAt)
		}
		return nil
	})
	var lagged *operatorpb.HistoryExport
	waitFor(t, 30*time.Second, "the lag shows", func() error {
		for _, m := range f.running() {
			if !m.srv.Node().IsLeader() {
				continue
			}
			s, err := operatorClient(t, m.srv.AdminSocket()).Status(tctx(t, 10*time.Second), &operatorpb.StatusRequest{})
			if err != nil {
				return err
			}
			if h := s.History; h.LedgerExporter && h.LedgerLagRecords > 0 && h.LedgerLagSeconds > 0 && h.LastError != "" {
				lagged = h
				return nil
			}
			return fmt.Errorf("leader's history status %v", s.History)
		}
		return errors.New("no leader")
	})
	t.Logf("PostgreSQL down: ledger lag %d records, %.1fs; error %q", lagged.LedgerLagRecords, lagged.LedgerLagSeconds, lagged.LastError)
	// The metrics say so too.
	exporter := f.leader()
	fams := scrape(t, exporter.srv.HTTPAddr())
	if v, _ := value(fams, "meshca_history_ledger_lag_records"); v <= 0 {
		t.Errorf("meshca_history_ledger_lag_records %v while PostgreSQL is down", v)
	}
	if v, _ := value(fams, "meshca_history_export_failing"); v != 1 {
		t.Errorf("meshca_history_export_failing %v while PostgreSQL is down", v)
	}
	if v, _ := value(fams, "meshca_history_ledger_exporter"); v != 1 {
		t.Errorf("meshca_history_ledger_exporter %v on the leader", v)
	}
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	<-done
	if len(load.serials) != 3000 {
		t.Fatalf("minted %d", len(load.serials))
	}
	waitExported(t, f, 60*time.Second)
	sameSerials(t, f, st, load.serials)
	fams = scrape(t, exporter.srv.HTTPAddr())
	if v, ok := value(fams, "meshca_history_ledger_lag_records"); !ok || v != 0 {
		t.Errorf("meshca_history_ledger_lag_records %v (%v) after the catch-up", v, ok)
	}
	if v, _ := value(fams, "meshca_history_export_failing"); v != 0 {
		t.Errorf("meshca_history_export_failing %v after the catch-up", v)
	}
}

func snapshot(l *mintLoad) map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.serials))
	for k := range l.serials {
		out[k] = true
	}
	return out
}

// Stop the exporting leader mid-export: a new leader's exporter resumes
// from the cursor, no gap, no duplicate. (The kill -9 of a server process
// is TestHistoryExporterKilled in cmd/meshca.)
func TestHistoryLeaderChange(t *testing.T) {
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	f := historyFleet(t, 3, dsn)
	st, err := postgres.Open(tctx(t, 30*time.Second), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var leader *member
	waitFor(t, 20*time.Second, "a leader", func() error {
		for _, m := range f.members {
			if m.srv.Node().IsLeader() {
				leader = m
				return nil
			}
		}
		return errors.New("no leader")
	})
	if leader == nil {
		t.Fatal("no leader")
	}
	// Load only through the followers, which stay up.
	var others []*member
	for _, m := range f.members {
		if m != leader {
			others = append(others, m)
		}
	}
	f2 := &fleet{t: t, members: others}
	load := &mintLoad{}
	done := make(chan struct{})
	go func() { load.run(t, f2, 2000, 4, nil); close(done) }()
	waitFor(t, 60*time.Second, "rows exported", func() error {
		n, err := st.CountCertificates(tctx(t, 5*time.Second))
		if err != nil || n < 300 {
			return fmt.Errorf("%d rows, %v", n, err)
		}
		return nil
	})
	leader.kill()
	<-done
	if len(load.serials) != 2000 {
		t.Fatalf("minted %d", len(load.serials))
	}
	waitExported(t, f, 60*time.Second)
	sameSerials(t, f, st, load.serials)
}

// A DSN pointing nowhere: the server starts, issues, and reports the lag.
func TestHistoryDatabaseNowhere(t *testing.T) {
	f := historyFleet(t, 1, "postgres://meshca:secret-pw-1@127.0.0.1:1/meshca?sslmode=disable&connect_timeout=1")
	load := &mintLoad{}
	load.run(t, f, 20, 2, nil)
	if len(load.serials) != 20 {
		t.Fatalf("minted %d", len(load.serials))
	}
	s, err := f.op.Status(tctx(t, 10*time.Second), &operatorpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h := s.History
	if !h.Enabled || h.LedgerLagRecords < 20 || h.LastError == "" || strings.Contains(h.LastError, "secret-pw-1") || strings.Contains(h.Database, "secret-pw-1") {
		t.Fatalf("history status %v", h)
	}
	if strings.Contains(f.log.String(), "secret-pw-1") {
		t.Fatal("the password is in the log")
	}
	if !strings.Contains(f.log.String(), "history database unreachable") {
		t.Fatalf("no warning in the log:\n%s", f.log.String())
	}
}

// A wrong password stops the start with an error naming the role, not the
// password.
func TestHistoryWrongPassword(t *testing.T) {
	pg := pgtest.Start(t)
	good := pg.Database(t)
	const secret = "Wrong-Secret-77"
	bad := strings.Replace(good, ":pw-", ":"+secret+"-", 1)
	st, err := postgres.New(postgres.Config{DSN: bad})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kek, err := ca.CreateKEKFile(tempDir(t) + "/kek")
	if err != nil {
		t.Fatal(err)
	}
	_, err = server.New(server.Config{DataDir: tempDir(t), NodeID: "s1", RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
		Bootstrap: true, TrustDomain: "example.org", History: st})
	if !postgres.IsAuth(err) || !strings.Contains(err.Error(), `role "meshca_`) || strings.Contains(err.Error(), secret) {
		t.Fatalf("start with a wrong password: %v", err)
	}
}

// Every Workload API deny (recorded by the agent, shipped through its
// server), every denied issuance and every operator command is in the
// history, with its actor and reason.
func TestHistoryAuditTrail(t *testing.T) {
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	f := newFleet(t, fleetOpts{servers: 1, agents: 1, clock: clockwork.NewRealClock(), tune: func(c *server.Config) {
		st, err := postgres.New(postgres.Config{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		c.History, c.ExportInterval = st, 20*time.Millisecond
	}})
	// A Workload API deny: this process asks only for SM2 X509-SVIDs, and
	// its entry is ECDSA.
	conn, err := grpc.NewClient("unix://"+f.agents[0].SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wl := workload.NewSpiffeWorkloadAPIClient(conn)
	waitFor(t, 30*time.Second, "the agent holds the workload's SVID", func() error {
		if valid, _ := f.agents[0].SVIDStatus(); valid != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	waitFor(t, 30*time.Second, "a Workload API deny", func() error {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true",
			agent.ProfilesMetadataKey, ca.ProfileSM2), 5*time.Second)
		defer cancel()
		stream, err := wl.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("fetch SM2 only: %v", err)
		}
		return nil
	})
	// A denied issuance and an operator command.
	if _, err := f.op.MintX509SVID(tctx(t, 10*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://other.org/w", Csr: []byte("x")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("mint for another trust domain: %v", err)
	}
	if _, err := f.op.CreateJoinToken(tctx(t, 10*time.Second), &operatorpb.CreateJoinTokenRequest{Kind: server.TokenKindAgent}); err != nil {
		t.Fatal(err)
	}
	find := func(req *operatorpb.QueryAuditRequest, match func(*operatorpb.HistoryAuditEvent) bool) error {
		resp, err := f.op.QueryAudit(tctx(t, 10*time.Second), req)
		if err != nil {
			return err
		}
		if resp.Source != server.SourcePostgres {
			return fmt.Errorf("source %q", resp.Source)
		}
		for _, e := range resp.Events {
			if match(e) {
				return nil
			}
		}
		return fmt.Errorf("not among %d events", len(resp.Events))
	}
	waitFor(t, 30*time.Second, "the Workload API deny in the history", func() error {
		return find(&operatorpb.QueryAuditRequest{Action: "workload.fetch_x509_svid", Decision: "deny"}, func(e *operatorpb.HistoryAuditEvent) bool {
			return e.Server == f.agentIDs[0] && strings.HasPrefix(e.Actor, "pid ") && e.Reason == "only entries of profiles not asked for match"
		})
	})
	waitFor(t, 30*time.Second, "the denied mint in the history", func() error {
		return find(&operatorpb.QueryAuditRequest{Action: "x509.mint", Decision: "deny", Actor: "operator"}, func(e *operatorpb.HistoryAuditEvent) bool {
			return e.Subject == "spiffe://other.org/w" && strings.Contains(e.Reason, "trust domain") && e.Operator
		})
	})
	waitFor(t, 30*time.Second, "the operator's commands in the history", func() error {
		if err := find(&operatorpb.QueryAuditRequest{Operator: true, Action: "token.create"}, func(e *operatorpb.HistoryAuditEvent) bool {
			return e.Subject == server.TokenKindAgent && e.Actor == "operator"
		}); err != nil {
			return err
		}
		return find(&operatorpb.QueryAuditRequest{Operator: true, Action: "entry.write", Decision: "allow"}, func(e *operatorpb.HistoryAuditEvent) bool {
			return e.Subject == f.ids[0]
		})
	})
	// The agent's stream is in the history once, without a gap.
	st, err := postgres.Open(tctx(t, 10*time.Second), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var n, maxSeq int64
	if err := st.Pool().QueryRow(tctx(t, 10*time.Second), "SELECT count(*), max(seq) FROM audit_events WHERE server = $1", f.agentIDs[0]).Scan(&n, &maxSeq); err != nil || n == 0 || n != maxSeq {
		t.Fatalf("agent events: %d up to seq %d, %v", n, maxSeq, err)
	}
}

// A revocation in the replicated state (issue 13's revoke command writes
// it; here the Raft command directly) reaches the exported row: listed by
// cert list --revoked from PostgreSQL, and from the hot window.
func TestHistoryRevoked(t *testing.T) {
	pg := pgtest.Start(t)
	f := historyFleet(t, 1, pg.Database(t))
	load := &mintLoad{}
	load.run(t, f, 5, 1, nil)
	waitExported(t, f, 30*time.Second)
	all, err := f.op.QueryCertificates(tctx(t, 10*time.Second), &operatorpb.QueryCertificatesRequest{SpiffeId: "spiffe://example.org/history/w1"})
	if err != nil || len(all.Certificates) != 1 || all.Source != server.SourcePostgres {
		t.Fatalf("the minted certificate: %v %v", all, err)
	}
	victim := all.Certificates[0]
	revokedAt := time.Now().Truncate(time.Second)
	if _, err := f.members[0].srv.Node().Apply(tctx(t, 10*time.Second), &raftpb.Command{Op: &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{
		Revocations: []*raftpb.Revocation{{IssuerId: victim.IssuerId, Serial: victim.Serial, RevokedUnixNano: revokedAt.UnixNano(), Reason: 1}}}}}); err != nil {
		t.Fatal(err)
	}
	for _, hot := range []bool{false, true} {
		waitFor(t, 30*time.Second, fmt.Sprintf("revoked listed (hot window %v)", hot), func() error {
			resp, err := f.op.QueryCertificates(tctx(t, 10*time.Second), &operatorpb.QueryCertificatesRequest{Revoked: true, HotWindow: hot})
			if err != nil {
				return err
			}
			if len(resp.Certificates) != 1 || string(resp.Certificates[0].Serial) != string(victim.Serial) ||
				resp.Certificates[0].RevokedUnix != revokedAt.Unix() || resp.Certificates[0].RevocationReason != 1 {
				return fmt.Errorf("%s: %v", resp.Source, resp.Certificates)
			}
			return nil
		})
	}
}

// The retention runs on the leader: audit events older than it are
// deleted from PostgreSQL in batches, certificates that have not expired
// stay.
func TestHistoryRetention(t *testing.T) {
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	f := newFleet(t, fleetOpts{servers: 1, clock: clockwork.NewRealClock(), tune: func(c *server.Config) {
		st, err := postgres.New(postgres.Config{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		c.History, c.ExportInterval, c.ExportBatch = st, 20*time.Millisecond, 7
		c.HistoryRetention, c.PruneInterval = 2*time.Second, 100*time.Millisecond
	}})
	st, err := postgres.Open(tctx(t, 10*time.Second), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	load := &mintLoad{}
	load.run(t, f, 30, 2, nil)
	count := func(q string) int64 {
		var n int64
		if err := st.Pool().QueryRow(tctx(t, 10*time.Second), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 30*time.Second, "the mints' audit events exported", func() error {
		if n := count("SELECT count(*) FROM audit_events WHERE action = 'x509.mint'"); n != 30 {
			return fmt.Errorf("%d", n)
		}
		return nil
	})
	// Two seconds on, the retention deletes them (in batches of 7), and
	// keeps the unexpired certificates.
	waitFor(t, 30*time.Second, "old audit events deleted", func() error {
		if n := count("SELECT count(*) FROM audit_events WHERE action = 'x509.mint'"); n != 0 {
			return fmt.Errorf("%d left", n)
		}
		return nil
	})
	if n := count("SELECT count(*) FROM certificates WHERE node_id = 'operator'"); n != 30 {
		t.Fatalf("%d certificates left, want the 30 unexpired", n)
	}
	if !strings.Contains(f.log.String(), "history pruned") {
		t.Fatal("no log of the retention")
	}
}
