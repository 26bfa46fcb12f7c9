// Package metrics serves a meshca process's operational HTTP endpoints:
// Prometheus metrics on /metrics, liveness on /healthz and readiness on
// /readyz. The server and the agent define their own metrics
// (meshca_server_..., meshca_agent_...) on a Registry from NewRegistry and
// serve them with Handler.
//
// Metrics that describe state (Raft, authorities, cached SVIDs, open
// streams) are read when scraped, by collectors, so that they cost nothing
// between scrapes; only events (issuances, renewals, pushes) are counted
// as they happen.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every meshca metric.
const Namespace = "meshca"

// NewRegistry returns a registry with the Go runtime's and the process's
// collectors (go_*, process_*).
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Readiness reports whether the process can do its work now, and why not.
type Readiness func(ctx context.Context) (ready bool, reason string)

// readyTimeout bounds a readiness check (it may ask the Raft leader).
const readyTimeout = 2 * time.Second

// Handler serves /metrics from g, /healthz (200 while the process runs)
// and /readyz (200 "ready", or 503 with the reason). Only GET and HEAD are
// answered.
func Handler(g prometheus.Gatherer, ready Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		ok, reason := ready(ctx)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", reason)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// CheckAddr validates an HTTP listen address (host:port) and reports
// whether it is a loopback address. The endpoints carry no authentication
// and no secrets; one that is not loopback (for Kubernetes probes and
// Prometheus scrapes from other hosts) is meant to be reached from the
// network, which the caller should say in its log.
func CheckAddr(addr string) (loopback bool, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("HTTP address %q: want host:port, e.g. 127.0.0.1:8080", addr)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// Server is the HTTP server of the endpoints on one listener.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen listens on addr (host:port; port 0 picks one) for h.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics and health endpoints: %w", err)
	}
	return &Server{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down (waiting at most a few
// seconds for scrapes in flight). It returns nil when ctx ended.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(s.ln) }() // returns once Shutdown or Close ran, waited for below
	select {
	case err := <-done:
		return fmt.Errorf("metrics and health endpoints: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close releases the listener of a server that will not Serve.
func (s *Server) Close() error { return s.ln.Close() }
