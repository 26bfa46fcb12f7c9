package sds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// benchServerEnv, set to a socket path, makes the test binary the
// out-of-process SDS server of BenchmarkFanOut: measuring its memory
// alone, without the 10,000 client streams.
const benchServerEnv = "SDS_BENCH_SERVER"

// benchSource grants every caller the one shared ROOTCA resource.
type benchSource struct{ cur func() *Resource }

func (s benchSource) Resolve(_ context.Context, name string) (Result, error) {
	if name == "ROOTCA" {
		return Grant(s.cur(), "bundle"), nil
	}
	return Refuse("bench serves ROOTCA only"), nil
}

func (s benchSource) Names(context.Context) ([]string, []string, error) {
	return []string{"ROOTCA"}, nil, nil
}

// runBenchServer serves SDS on the socket named by benchServerEnv and
// obeys commands on stdin, one per line: "bump" (a new bundle version,
// notified), "mem" (heap, stacks and RSS after a GC). It exits at EOF.
func runBenchServer() int {
	socket := os.Getenv(benchServerEnv)
	pki := newPKI(panicT{})
	var mu sync.Mutex
	version := 1
	cur := pki.bundle(panicT{}, "bundle-1", 1)
	srv, err := New(Config{Secrets: func(context.Context, *corev3.Node) (Source, error) {
		return benchSource{cur: func() *Resource { mu.Lock(); defer mu.Unlock(); return cur }}, nil
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	if path := os.Getenv("SDS_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	for in.Scan() {
		switch in.Text() {
		case "bump":
			version++
			next := pki.bundle(panicT{}, "bundle-"+strconv.Itoa(version), int64(version))
			mu.Lock()
			cur = next
			mu.Unlock()
			srv.Notify("bundle")
			fmt.Println("ok")
		case "mem":
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("heap=%d stack=%d rss=%d goroutines=%d streams=%d\n", ms.HeapAlloc, ms.StackInuse, rss(), runtime.NumGoroutine(), srv.Stats().OpenStreams)
		}
	}
	gs.Stop()
	srv.Close()
	return 0
}

// rss is the resident set size of this process, from /proc.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

type benchChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func (c *benchChild) do(b *testing.B, cmd string) string {
	b.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		b.Fatal(err)
	}
	if !c.out.Scan() {
		b.Fatalf("bench server: no answer to %q: %v", cmd, c.out.Err())
	}
	return c.out.Text()
}

func memField(b *testing.B, line, key string) float64 {
	b.Helper()
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no %s in %q", key, line)
	return 0
}

// BenchmarkFanOut opens 10,000 SotW streams (100 connections × 100
// streams, real gRPC over a Unix socket) to an SDS server in a child
// process, each subscribed to ROOTCA and idle after its ACK, then changes
// the bundle b.N times: it reports the time until every stream has the new
// version (p50/p99/max over streams and rounds) and the server's memory
// per idle stream (heap, goroutine stacks and RSS, divided by streams).
func BenchmarkFanOut(b *testing.B) {
	const conns, perConn = 100, 100
	dir, err := os.MkdirTemp("", "sdsb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "s.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+socket)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	child := &benchChild{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	defer func() {
		in.Close()
		_ = cmd.Wait()
	}()
	if !child.out.Scan() || child.out.Text() != "ready" {
		b.Fatalf("bench server did not start: %v", child.out.Err())
	}
	base := child.do(b, "mem")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	type got struct {
		version string
		at      time.Time
	}
	recvd := make(chan got, conns*perConn)
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(conns * perConn)
	var clientConns []*grpc.ClientConn
	for c := 0; c < conns; c++ {
		conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		clientConns = append(clientConns, conn)
		client := secretv3.NewSecretDiscoveryServiceClient(conn)
		for s := 0; s < perConn; s++ {
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				st, err := client.StreamSecrets(ctx)
				if err != nil {
					b.Error(err)
					ready.Done()
					return
				}
				req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: id}, ResourceNames: []string{"ROOTCA"}, TypeUrl: SecretTypeURL}
				first := true
				for {
					if err := st.Send(req); err != nil {
						if first {
							ready.Done()
						}
						return
					}
					resp, err := st.Recv()
					if err != nil {
						if first {
							ready.Done()
						}
						return
					}
					now := time.Now()
					req = &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA"}, TypeUrl: SecretTypeURL, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
					if first {
						first = false
						ready.Done()
						continue
					}
					recvd <- got{resp.GetVersionInfo(), now}
				}
			}(fmt.Sprintf("proxy-%d-%d", c, s))
		}
	}
	ready.Wait()
	streams := float64(conns * perConn)
	idle := child.do(b, "mem")
	if open := memField(b, idle, "streams"); open != streams {
		b.Fatalf("server has %v streams open, want %v", open, streams)
	}

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		child.do(b, "bump")
		version := ""
		for n := 0; n < conns*perConn; n++ {
			g := <-recvd
			if version == "" {
				version = g.version
			} else if g.version != version {
				b.Fatalf("stream got version %s, others %s", g.version, version)
			}
			lat = append(lat, g.at.Sub(t0))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric((memField(b, idle, "heap")-memField(b, base, "heap"))/streams, "heap-B/stream")
	b.ReportMetric((memField(b, idle, "stack")-memField(b, base, "stack"))/streams, "stack-B/stream")
	b.ReportMetric((memField(b, idle, "rss")-memField(b, base, "rss"))/streams, "rss-B/stream")
	b.ReportMetric(0, "ns/op")
	cancel()
	wg.Wait()
	for _, c := range clientConns {
		c.Close()
	}
}

// BenchmarkRotationBytes compares the bytes sent per rotation to a proxy
// holding 100 secrets: SotW on one stream (every response carries all 100)
// against delta (only the rotated one). Without ADS, Envoy's SotW uses one
// stream per secret, which sends about what delta does.
func BenchmarkRotationBytes(b *testing.B) {
	store := newFakeStore()
	srv, err := New(Config{Secrets: func(_ context.Context, node *corev3.Node) (Source, error) { return store.source(node.GetId()), nil }})
	if err != nil {
		b.Fatal(err)
	}
	store.srv = srv
	dir, err := os.MkdirTemp("", "sdsr")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	lis, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); srv.Close() }()
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)

	p := newPKI(b)
	var names []string
	for i := 0; i < 100; i++ {
		n := fmt.Sprintf("spiffe://example.org/w/%d", i)
		names = append(names, n)
		r := p.svid(b, n, n, "v0")
		store.grant("sotw", n, r)
		store.grant("delta", n, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sotwStream, err := client.StreamSecrets(ctx)
	if err != nil {
		b.Fatal(err)
	}
	deltaStream, err := client.DeltaSecrets(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := sotwStream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sotw"}, ResourceNames: names}); err != nil {
		b.Fatal(err)
	}
	if err := deltaStream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "delta"}, ResourceNamesSubscribe: names}); err != nil {
		b.Fatal(err)
	}
	ackSotW := func() int {
		r, err := sotwStream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if err := sotwStream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			b.Fatal(err)
		}
		return proto.Size(r)
	}
	ackDelta := func() int {
		r, err := deltaStream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if err := deltaStream.Send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: r.GetNonce()}); err != nil {
			b.Fatal(err)
		}
		return proto.Size(r)
	}
	ackSotW()
	ackDelta()
	var sotwBytes, deltaBytes int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := names[i%len(names)]
		r := p.svid(b, n, n, fmt.Sprintf("v%d", i+1))
		store.grant("sotw", n, r)
		store.grant("delta", n, r)
		sotwBytes += ackSotW()
		deltaBytes += ackDelta()
	}
	b.StopTimer()
	b.ReportMetric(float64(sotwBytes)/float64(b.N), "sotw-B/rotation")
	b.ReportMetric(float64(deltaBytes)/float64(b.N), "delta-B/rotation")
	cancel()
}
