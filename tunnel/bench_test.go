package tunnel

import (
	"crypto/x509"

	"github.com/meshca/meshca/internal/testtool"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Benchmarks of a pair of tunnels (an outbound one dialling an inbound
// one over loopback mTLS) beside direct TCP and, when installed, the same
// pair built from stunnel4 and from HAProxy with the same certificates
// and TLS 1.3 (they verify the chain against the roots; meshca also checks
// CRLs and asks the OPA policy on every connection):
//
//	go test ./tunnel -run '^$' -bench BenchmarkPair -benchtime 2s
//
// The path's protocol: the client sends an 8-byte length and that many
// bytes; the sink answers one byte once it has read them all.

// sink is the plain service at the end of every path.
func sink(tb testing.TB) string {
	return testtool.ServeTCP(tb, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		var hdr [8]byte
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			for n := int64(binary.BigEndian.Uint64(hdr[:])); n > 0; {
				k, err := c.Read(buf[:min(int64(len(buf)), n)])
				if err != nil {
					return
				}
				n -= int64(k)
			}
			if _, err := c.Write([]byte{1}); err != nil {
				return
			}
		}
	})
}

// send sends one message of n bytes on c and waits for the sink's answer.
func send(c net.Conn, n int64, buf []byte) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return err
	}
	for left := n; left > 0; {
		k, err := c.Write(buf[:min(int64(len(buf)), left)])
		if err != nil {
			return err
		}
		left -= int64(k)
	}
	_, err := io.ReadFull(c, hdr[:1])
	return err
}

// path is a way from a plaintext client to the sink.
type path struct {
	entry string
	pids  []int // external processes, for their memory
}

func directPath(b *testing.B) path { return path{entry: sink(b)} }

// meshcaPath is a pair of tunnels fed by a real sds.Server (the
// fixture of the tests): outbound → inbound (CRLs, policy) → sink.
func meshcaPath(b *testing.B) path {
	f := newFixture(b, time.Now())
	cfg := f.config(b)
	cfg.Inbound[0].Target = sink(b)
	in, _ := start(b, cfg)
	serverID, err := x509svid.IDFromCert(f.server[0])
	if err != nil {
		b.Fatal(err)
	}
	out, _ := start(b, Config{Socket: f.agent.socket,
		Outbound: []Outbound{{Name: "out", Listen: "127.0.0.1:0", Remote: in.Addr("in").String(), ExpectIDs: []spiffeid.ID{serverID}}}})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a, _ := in.Ready()
		o, _ := out.Ready()
		if a && o {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("tunnels not ready")
		}
	}
	return path{entry: out.Addr("out").String()}
}

// pemFiles writes the server SVID (chain and key), a client SVID and the
// roots for stunnel and HAProxy.
func pemFiles(b *testing.B, dir string) (serverPEM, clientPEM, roots string) {
	ca := newTestCA(b, "example.org", time.Now())
	write := func(name string, chain []*x509.Certificate, key any) string {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, append(pemOf("CERTIFICATE", rawOf(chain)...), pemOf("PRIVATE KEY", der)...), 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	s, sk := ca.svidKey("/ns/b/sa/server")
	c, ck := ca.svidKey("/ns/a/sa/client")
	roots = filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(roots, pemOf("CERTIFICATE", ca.root.Raw), 0o644); err != nil {
		b.Fatal(err)
	}
	return write("server.pem", s, sk), write("client.pem", c, ck), roots
}

func freePort(b *testing.B) string { return testtool.FreePort(b) }

// startProc runs a command until the benchmark ends and waits for addr to
// accept connections.
func startProc(b *testing.B, addr string, name string, args ...string) int {
	cmd := exec.Command(name, args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not listen on %s:\n%s", name, addr, out)
		}
	}
}

func stunnelPath(b *testing.B) path {
	bin, err := exec.LookPath("stunnel4")
	if err != nil {
		b.Skip("stunnel4 is not installed (apt-get install stunnel4)")
	}
	dir := b.TempDir()
	server, client, roots := pemFiles(b, dir)
	entry, mid := freePort(b), freePort(b)
	conf := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("foreground = yes\npid =\ndebug = 3\n"+body), 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	srv := conf("server.conf", fmt.Sprintf("[in]\naccept = %s\nconnect = %s\ncert = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n", mid, sink(b), server, roots))
	cli := conf("client.conf", fmt.Sprintf("[out]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n", entry, mid, client, roots))
	p1 := startProc(b, mid, bin, srv)
	p2 := startProc(b, entry, bin, cli)
	return path{entry: entry, pids: []int{p1, p2}}
}

func haproxyPath(b *testing.B) path {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		b.Skip("haproxy is not installed (apt-get install haproxy)")
	}
	dir := b.TempDir()
	server, client, roots := pemFiles(b, dir)
	entry, mid := freePort(b), freePort(b)
	cfg := filepath.Join(dir, "haproxy.cfg")
	body := fmt.Sprintf(`global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend in
  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3
  default_backend sink
backend sink
  server s %s
frontend out
  bind %s
  default_backend mid
backend mid
  server m %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3
`, mid, server, roots, sink(b), entry, mid, client, roots)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		b.Fatal(err)
	}
	p := startProc(b, entry, bin, "-db", "-f", cfg)
	return path{entry: entry, pids: []int{p}}
}

var paths = []struct {
	name string
	make func(*testing.B) path
}{{"direct", directPath}, {"meshca", meshcaPath}, {"stunnel4", stunnelPath}, {"haproxy", haproxyPath}}

// BenchmarkPairThroughput: MiB/s over one connection and over 16 in
// parallel.
func BenchmarkPairThroughput(b *testing.B) {
	for _, p := range paths {
		for _, conns := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/conns=%d", p.name, conns), func(b *testing.B) {
				pp := p.make(b)
				cs := make([]net.Conn, conns)
				for i := range cs {
					c, err := net.Dial("tcp", pp.entry)
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					cs[i] = c
				}
				const chunk = 1 << 20
				b.SetBytes(chunk)
				b.ResetTimer()
				var wg sync.WaitGroup
				errs := make(chan error, conns)
				for i, c := range cs {
					n := b.N / conns
					if i < b.N%conns {
						n++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, 64<<10)
						if n > 0 {
							if err := send(c, int64(n)*chunk, buf); err != nil {
								errs <- err
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkPairHandshakes: new connections per second through the path
// (connect, a one-byte message and its answer, close), 8 at a time.
func BenchmarkPairHandshakes(b *testing.B) {
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			pp := p.make(b)
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := []byte{7}
				for pb.Next() {
					c, err := net.Dial("tcp", pp.entry)
					if err != nil {
						b.Error(err)
						return
					}
					err = send(c, 1, buf)
					c.Close()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}

// BenchmarkPairIdleMemory: memory per idle connection held open through
// the path (both ends' processes): for meshca the Go heap and stacks of
// this process less those of direct connections, for stunnel4 and HAProxy
// the growth of their resident set.
func BenchmarkPairIdleMemory(b *testing.B) {
	const n = 500
	inUse := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	rss := func(pids []int) uint64 {
		var total uint64
		for _, pid := range pids {
			b2, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b2), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					kb, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
					total += kb << 10
				}
			}
		}
		return total
	}
	var direct float64
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			for range b.N {
				pp := p.make(b)
				before, beforeRSS := inUse(), rss(pp.pids)
				cs := make([]net.Conn, 0, n)
				for range n {
					c, err := net.Dial("tcp", pp.entry)
					if err != nil {
						b.Fatal(err)
					}
					if err := send(c, 1, []byte{1}); err != nil {
						b.Fatal(err)
					}
					cs = append(cs, c)
				}
				after, afterRSS := inUse(), rss(pp.pids)
				per := float64(after-min(before, after)) / n
				switch {
				case p.name == "direct":
					direct = per
					b.ReportMetric(per, "B/conn")
				case len(pp.pids) > 0:
					b.ReportMetric(float64(afterRSS-min(beforeRSS, afterRSS))/n, "B/conn")
				default:
					b.ReportMetric(per-direct, "B/conn")
				}
				for _, c := range cs {
					c.Close()
				}
			}
		})
	}
}
