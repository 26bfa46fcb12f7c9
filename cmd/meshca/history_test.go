package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/pgtest"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/meshca/meshca/store/postgres"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// startHistoryCluster starts three server processes exporting to dsn and
// returns them, in order, once all three are voters.
func startHistoryCluster(t *testing.T, bin, dsn string) []*serverProc {
	t.Helper()
	base := shortTempDir(t)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 6)
	var procs []*serverProc
	for i, name := range []string{"s1", "s2", "s3"} {
		p := &serverProc{name: name, dataDir: filepath.Join(base, name), raftAddr: ports[2*i], apiAddr: ports[2*i+1],
			logPath: filepath.Join(base, name+".log")}
		p.sock = filepath.Join(p.dataDir, server.AdminSocketName)
		procs = append(procs, p)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for _, p := range procs {
				if b, err := os.ReadFile(p.logPath); err == nil {
					t.Logf("log of %s:\n%s", p.name, b)
				}
			}
		}
	})
	s1 := procs[0]
	s1.start(t, bin, kek, "--bootstrap", "--trust-domain", "example.org", "--postgres-dsn", dsn)
	waitFor(t, 20*time.Second, "s1 bootstrapped", func() (bool, string) {
		b, _ := os.ReadFile(s1.logPath)
		return strings.Contains(string(b), bootstrappedLog), "not yet"
	})
	bundle := filepath.Join(s1.dataDir, "server", "bundle.pem")
	for _, p := range procs[1:] {
		r := mustRunBin(t, bin, "token", "create", "--kind", "server", "--output", "json", "--addr", s1.addr())
		var tok tokenReport
		if err := json.Unmarshal([]byte(r.stdout), &tok); err != nil {
			t.Fatal(err)
		}
		p.start(t, bin, kek, "--join", s1.apiAddr, "--join-token", tok.Token, "--trust-bundle", bundle, "--postgres-dsn", dsn)
	}
	for _, p := range procs {
		waitFor(t, 30*time.Second, p.name+" ready", func() (bool, string) {
			st, ok, msg := binStatus(t, bin, p)
			return ok && st.Ready, msg
		})
	}
	return procs
}

func opClientFor(t *testing.T, p *serverProc) operatorpb.OperatorClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+p.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return operatorpb.NewOperatorClient(conn)
}

// listSerials pages through `meshca cert list --output json` (args pick
// the source) and returns the serials, failing on a duplicate.
func listSerials(t *testing.T, bin string, p *serverProc, args ...string) (map[string]bool, string) {
	t.Helper()
	out := map[string]bool{}
	tok, source := "", ""
	for {
		a := append([]string{"cert", "list", "--output", "json", "--limit", "10000", "--addr", p.addr()}, args...)
		if tok != "" {
			a = append(a, "--page-token", tok)
		}
		r := mustRunBin(t, bin, a...)
		var page struct {
			Certificates []certReport `json:"certificates"`
			Next         string       `json:"next_page_token"`
			Source       string       `json:"source"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
			t.Fatalf("cert list: %v\n%.500s", err, r.stdout)
		}
		for _, c := range page.Certificates {
			if out[c.Serial] {
				t.Fatalf("serial %s listed twice (%s)", c.Serial, page.Source)
			}
			out[c.Serial] = true
		}
		source = page.Source
		if tok = page.Next; tok == "" {
			return out, source
		}
	}
}

// Kill -9 the exporting server (the leader) while it exports under load:
// the new leader's exporter resumes from the cursor in PostgreSQL, and
// meshca cert list from PostgreSQL lists exactly the ledger's certificates,
// once each. Denials and operator commands are in meshca audit list.
func TestHistoryExporterKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three server processes and PostgreSQL")
	}
	pg := pgtest.Start(t)
	dsn := pg.Database(t)
	bin := meshcaBinary(t)
	procs := startHistoryCluster(t, bin, dsn)
	st, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	status, _, _ := binStatus(t, bin, procs[0])
	var leader *serverProc
	var followers []*serverProc
	for _, p := range procs {
		if p.name == status.LeaderID {
			leader = p
		} else {
			followers = append(followers, p)
		}
	}
	if leader == nil {
		t.Fatalf("no leader: %+v", status)
	}
	// Mint through the followers (they stay up) until stopped.
	var (
		mu      sync.Mutex
		minted  = map[string]bool{}
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		mintErr = make(chan error, 8)
	)
	for w := 0; w < 4; w++ {
		op := opClientFor(t, followers[w%2])
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
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				resp, err := op.MintX509SVID(ctx, &operatorpb.MintX509SVIDRequest{SpiffeId: fmt.Sprintf("spiffe://example.org/kill9/w%d", i%20), Csr: csr})
				cancel()
				if err != nil {
					continue // an election under way: retried
				}
				leaf, err := ca.ECDSA.ParseCertificate(resp.Chain[0])
				if err != nil {
					mintErr <- err
					return
				}
				mu.Lock()
				minted[fmt.Sprintf("%x", leaf.SerialNumber.Bytes())] = true
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(minted) }
	waitFor(t, 60*time.Second, "rows exported", func() (bool, string) {
		n, err := st.CountCertificates(context.Background())
		return err == nil && n >= 500, fmt.Sprintf("%d rows, %v", n, err)
	})
	leader.kill() // SIGKILL, in the middle of the export under load
	before := count()
	waitFor(t, 60*time.Second, "issuance after the kill", func() (bool, string) {
		return count() >= before+500, fmt.Sprintf("%d minted, %d at the kill", count(), before)
	})
	close(stop)
	wg.Wait()
	select {
	case err := <-mintErr:
		t.Fatal(err)
	default:
	}
	// The survivors export everything; the new leader exports the ledger.
	waitFor(t, 60*time.Second, "export caught up", func() (bool, string) {
		for _, p := range followers {
			s, ok, msg := binStatus(t, bin, p)
			if !ok || s.History == nil {
				return false, msg
			}
			if h := s.History; h.LedgerLagRecords != 0 || h.AuditLagEvents != 0 || h.LastError != "" {
				return false, fmt.Sprintf("%s: %+v", p.name, *h)
			}
		}
		return true, ""
	})
	// meshca status shows the export, never the password.
	table := mustRunBin(t, bin, "status", "--addr", followers[0].addr())
	if !strings.Contains(table.stdout, "history database") || !strings.Contains(table.stdout, "ledger export") || strings.Contains(table.stdout, "pw-") {
		t.Errorf("status:\n%s", table.stdout)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	for _, p := range procs {
		if b, _ := os.ReadFile(p.logPath); len(pw) < 6 || strings.Contains(string(b), pw) {
			t.Errorf("the database password is in %s's log", p.name)
		}
	}
	ledger, src := listSerials(t, bin, followers[0], "--hot-window")
	if src != server.SourceRaft {
		t.Fatalf("hot window source %q", src)
	}
	history, src := listSerials(t, bin, followers[0])
	if src != server.SourcePostgres {
		t.Fatalf("history source %q", src)
	}
	n, err := st.CountCertificates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	missing, extra, lost := 0, 0, 0
	for s := range ledger {
		if !history[s] {
			missing++
		}
	}
	for s := range history {
		if !ledger[s] {
			extra++
		}
	}
	for s := range minted {
		if !history[s] {
			lost++
		}
	}
	if missing+extra+lost > 0 || int(n) != len(history) {
		t.Fatalf("ledger %d, history %d (%d rows): %d missing, %d extra, %d of %d minted not in the history", len(ledger), len(history), n, missing, extra, lost, len(minted))
	}
	t.Logf("%d certificates minted, %d in the ledger and exactly once in PostgreSQL after the exporter's kill -9", len(minted), len(ledger))

	// Denials and operator commands, with actor and reason, in audit list.
	op := opClientFor(t, followers[0])
	_, err = op.MintX509SVID(context.Background(), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://other.org/x", Csr: []byte("x")})
	if err == nil {
		t.Fatal("a mint for another trust domain was allowed")
	}
	mustRunBin(t, bin, "token", "create", "--kind", "agent", "--addr", followers[1].addr())
	waitFor(t, 30*time.Second, "denial and operator command in audit list", func() (bool, string) {
		r := mustRunBin(t, bin, "audit", "list", "--decision", "deny", "--action", "x509.mint", "--output", "json", "--addr", followers[1].addr())
		var page struct {
			Events []auditEventReport `json:"events"`
			Source string             `json:"source"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
			t.Fatal(err)
		}
		if page.Source != server.SourcePostgres || len(page.Events) != 1 || page.Events[0].Actor != "operator" || page.Events[0].Server != followers[0].name ||
			!strings.Contains(page.Events[0].Reason, "trust domain") {
			return false, r.stdout
		}
		r = mustRunBin(t, bin, "audit", "list", "--operator", "--action", "token.create", "--output", "json", "--addr", followers[0].addr())
		if err := json.Unmarshal([]byte(r.stdout), &page); err != nil {
			t.Fatal(err)
		}
		// Two server tokens from s1 at the start, one agent token now.
		if len(page.Events) != 3 || page.Events[2].Server != followers[1].name || page.Events[2].Actor != "operator" || page.Events[2].Subject != "agent" {
			return false, r.stdout
		}
		return true, ""
	})
}
