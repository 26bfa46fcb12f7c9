package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/server"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// get fetches url and returns its status code and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape parses the metrics at addr.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics on %s: %d\n%s", addr, code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics on %s does not parse: %v", addr, err)
	}
	return fams
}

// value returns the value of the sample of family name whose labels
// include want (name=value pairs), and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// A server and an agent serve /metrics, /healthz and /readyz: the agent is
// not ready until it has attested and synced, and is after; after a
// workload got its SVID the issuance and renewal counters have moved and
// the state gauges say what holds. Every metric the Prometheus rules and
// the Grafana dashboard in deploy/ name is in these scrapes.
func TestMetricsAndHealth(t *testing.T) {
	e := startServerWith(t, func(c *server.Config) { c.HTTPAddr = "127.0.0.1:0" })
	srvAddr := e.srv.HTTPAddr()
	if code, body := get(t, "http://"+srvAddr+"/healthz"); code != http.StatusOK {
		t.Fatalf("server /healthz: %d %s", code, body)
	}
	waitFor(t, 20*time.Second, "server /readyz", func() error {
		if code, body := get(t, "http://"+srvAddr+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	// The agent cannot reach the server until gate is closed.
	gate := make(chan struct{})
	token := e.token()
	e.entry(agentIDFor(token), "spiffe://example.org/metrics/w", 0, "unix:uid:"+uid)
	dir := tempDir(t)
	a, err := agent.New(agent.Config{Servers: []string{e.srv.APIAddr()}, TrustBundle: e.bundle, DataDir: dir,
		SocketPath: filepath.Join(dir, "agent.sock"), Evidence: jointoken.NewEvidence(token),
		WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})},
		Logger:            slog.New(slog.NewTextHandler(&e.agentLog, nil)), Audit: &e.agentEvents, HTTPAddr: "127.0.0.1:0",
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	agentAddr := a.HTTPAddr()
	if code, _ := get(t, "http://"+agentAddr+"/healthz"); code != http.StatusOK {
		t.Fatalf("agent /healthz: %d", code)
	}
	if code, body := get(t, "http://"+agentAddr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not attested") {
		t.Fatalf("agent /readyz before it reached a server: %d %q, want 503 not attested", code, body)
	}
	if v, _ := value(scrape(t, agentAddr), "meshca_agent_synced"); v != 0 {
		t.Fatalf("meshca_agent_synced = %v before any sync", v)
	}
	close(gate)
	waitFor(t, 30*time.Second, "agent /readyz", func() error {
		if code, body := get(t, "http://"+agentAddr+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	// A workload's stream, held open while the agent is scraped.
	conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithCancel(metadata.AppendToOutgoingContext(tctx(t, time.Minute), "workload.spiffe.io", "true"))
	defer scancel()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(sctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("the workload's SVID: %v", err)
	}

	af := scrape(t, agentAddr)
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"meshca_agent_svids", nil, 1},
		{"meshca_agent_entries", nil, 1},
		{"meshca_agent_svid_renewals_total", []string{"result", "ok"}, 1},
		{"meshca_agent_sync_updates_total", nil, 1},
		{"meshca_agent_synced", nil, 1},
		{"meshca_agent_server_connected", nil, 1},
		{"meshca_agent_streams", []string{"api", "workload"}, 1},
		{"meshca_agent_svid_earliest_expiry_timestamp_seconds", nil, float64(time.Now().Unix())},
		{"meshca_agent_identity_not_after_timestamp_seconds", nil, float64(time.Now().Unix())},
	} {
		if v, ok := value(af, c.name, c.labels...); !ok || v < c.min {
			t.Errorf("agent %s%v = %v (present %v), want >= %v", c.name, c.labels, v, ok, c.min)
		}
	}
	sf := scrape(t, srvAddr)
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"meshca_server_issuance_total", []string{"kind", "agent_svid", "result", "issued"}, 1},
		{"meshca_server_issuance_total", []string{"kind", "workload_svid", "profile", "ecdsa", "result", "issued"}, 1},
		{"meshca_server_issuance_duration_seconds", []string{"kind", "workload_svid"}, 1},
		{"meshca_server_ledger_commit_duration_seconds", nil, 1},
		{"meshca_raft_apply_duration_seconds", nil, 1},
		{"meshca_server_ledger_records", nil, 2},
		{"meshca_raft_state", []string{"state", "Leader"}, 1},
		{"meshca_raft_has_leader", nil, 1},
		{"meshca_raft_applied_index", nil, 1},
		{"meshca_server_attested_nodes", nil, 1},
		{"meshca_policy_issuance_revision", nil, 0},
		{"meshca_policy_issuance_evaluations_total", nil, 0},
		{"meshca_policy_issuance_cached_decisions_total", nil, 0},
		{"meshca_authority_not_after_timestamp_seconds", []string{"kind", "root", "profile", "ecdsa"}, float64(time.Now().Add(9 * 365 * 24 * time.Hour).Unix())},
		{"meshca_authority_not_after_timestamp_seconds", []string{"kind", "intermediate", "profile", "sm2"}, float64(time.Now().Unix())},
	} {
		if v, ok := value(sf, c.name, c.labels...); !ok || v < c.min {
			t.Errorf("server %s%v = %v (present %v), want >= %v", c.name, c.labels, v, ok, c.min)
		}
	}
	if v, _ := value(sf, "meshca_server_issuance_total", "result", "denied"); v != 0 {
		t.Errorf("denied issuances = %v, want 0", v)
	}

	// What deploy/ queries exists.
	scraped := map[string]bool{}
	for _, fams := range []map[string]*dto.MetricFamily{af, sf} {
		for name, f := range fams {
			scraped[name] = true
			if f.GetType() == dto.MetricType_HISTOGRAM {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					scraped[name+s] = true
				}
			}
		}
	}
	ref := regexp.MustCompile(`\b(meshca_[a-z0-9_]+|up)\b`)
	for _, file := range []string{"../../deploy/prometheus/rules.yml", "../../deploy/grafana/meshca.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var missing []string
		for _, m := range ref.FindAllString(string(b), -1) {
			// meshca_history_* exist only with a history database (the
			// history tests scrape them against PostgreSQL), and
			// meshca_policy_bundle_revision once a bundle is pushed.
			if m != "up" && !scraped[m] && !strings.HasPrefix(m, "meshca_history_") && m != "meshca_policy_bundle_revision" {
				missing = append(missing, m)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("%s names metrics that no server or agent exports: %v", file, missing)
		}
	}
}
