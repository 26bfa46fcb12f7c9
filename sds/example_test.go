package sds_test

import (
	"context"
	"log/slog"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshca/meshca/sds"
	"google.golang.org/grpc"
)

// workload is what an agent adapter knows of one attested caller.
type workload struct {
	svids  map[string]*sds.Resource // "default", "default~sm2", SPIFFE IDs → current SVID secret
	bundle *sds.Resource            // ROOTCA: roots and CRLs of the trust domain
}

// source adapts one workload to sds.Source.
type source struct{ w *workload }

func (s source) Resolve(_ context.Context, name string) (sds.Result, error) {
	var naming sds.Naming // the agent config's names
	n, err := naming.Parse(name)
	if err != nil {
		return sds.Refuse(err.Error(), "entries"), nil
	}
	switch n.Kind {
	case sds.KindDefaultBundle:
		return sds.Grant(s.w.bundle, "bundle/"+n.Profile), nil
	case sds.KindDefaultSVID, sds.KindSVID:
		if r, ok := s.w.svids[name]; ok {
			return sds.Grant(r, "svid/"+name, "entries"), nil
		}
		return sds.Refuse("no such identity for this workload", "entries"), nil
	}
	return sds.Refuse("not served", "entries"), nil
}

func (s source) Names(context.Context) ([]string, []string, error) {
	names := []string{sds.DefaultBundleName}
	for n := range s.w.svids {
		names = append(names, n)
	}
	return names, []string{"entries"}, nil
}

// The agent builds the server with a Secrets function that attests the
// caller, registers it on the gRPC server of its socket, and calls Notify
// whenever an SVID, bundle, CRL or entry changes.
func ExampleNew() {
	attest := func(ctx context.Context) (*workload, error) { return &workload{}, nil } // SO_PEERCRED + workload attestors
	srv, err := sds.New(sds.Config{
		Secrets: func(ctx context.Context, node *corev3.Node) (sds.Source, error) {
			w, err := attest(ctx)
			if err != nil {
				return nil, err // e.g. status PermissionDenied
			}
			return source{w}, nil
		},
		Audit: func(ctx context.Context, e sds.AuditEvent) { slog.Info("sds", "decision", e.Decision, "name", e.Name) },
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	gs := grpc.NewServer()
	srv.Register(gs)
	// ... gs.Serve(unixListener); on a bundle or CRL change:
	srv.Notify("bundle/ecdsa")
}
