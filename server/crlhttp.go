package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/meshca/meshca/proto/raftpb"
)

// The CRL HTTP endpoint (issue 13), for relying parties outside the mesh:
// with Config.CRLAddr set, every server serves the current CRL of every
// authority, DER encoded (RFC 5280 section 4.2.1.13 distribution points),
// from its own copy of the replicated state:
//
//	GET /crl                        the authority IDs with a CRL, one a line
//	GET /crl/<authority ID>         application/pkix-crl
//	GET /crl/<authority ID>.crl     the same
//
// Authority IDs are those of meshca authority show (for example
// ecdsa/intermediate/3f1c...). Revoked authorities' CRLs are not served.

// crlHTTPTimeout bounds reading a request and writing an answer.
const crlHTTPTimeout = 10 * time.Second

func (s *Server) crlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /crl", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		r := s.fsm.Read()
		for _, c := range r.CRLs() {
			if a := r.Authority(c.AuthorityId); a != nil && a.State != raftpb.AuthorityState_REVOKED {
				fmt.Fprintln(w, c.AuthorityId)
			}
		}
	})
	mux.HandleFunc("GET /crl/{id...}", func(w http.ResponseWriter, req *http.Request) {
		id := strings.TrimSuffix(req.PathValue("id"), ".crl")
		r := s.fsm.Read()
		c, a := r.CRL(id), r.Authority(id)
		if c == nil || a == nil || a.State == raftpb.AuthorityState_REVOKED {
			http.Error(w, fmt.Sprintf("no CRL of authority %q", id), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Header().Set("Content-Length", fmt.Sprint(len(c.Der)))
		// Caches may keep it until the next scheduled refresh at most.
		if maxAge := time.Unix(c.NextUpdateUnix, 0).Sub(s.cfg.Clock.Now()) / 2; maxAge > 0 {
			w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d", int(maxAge.Seconds())))
		}
		w.Write(c.Der)
	})
	return mux
}

// listenCRL opens the CRL HTTP listener when configured.
func (s *Server) listenCRL() error {
	if s.cfg.CRLAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.CRLAddr)
	if err != nil {
		return fmt.Errorf("CRL address: %w", err)
	}
	s.crlLn = ln
	s.cfg.CRLAddr = ln.Addr().String()
	s.crlHTTP = &http.Server{Handler: s.crlHandler(), ReadHeaderTimeout: crlHTTPTimeout, ReadTimeout: crlHTTPTimeout,
		WriteTimeout: crlHTTPTimeout, MaxHeaderBytes: 8 << 10}
	return nil
}

// serveCRL serves the CRL endpoint until close shuts it.
func (s *Server) serveCRL() error {
	if err := s.crlHTTP.Serve(s.crlLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// CRLAddr is the address of the CRL HTTP endpoint, if configured.
func (s *Server) CRLAddr() string { return s.cfg.CRLAddr }
