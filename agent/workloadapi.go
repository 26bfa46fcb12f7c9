package agent

import (
	"bytes"
	"context"

	"github.com/meshca/meshca/agent/peercred"
	"github.com/meshca/meshca/ca"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// workloadAPI is the SPIFFE Workload API on the agent's socket.
//
// X509-SVIDs of both profiles are served; each SVID's bundle holds the
// roots of its profile. FetchX509Bundles serves the ECDSA roots only:
// crypto/x509-based clients (go-spiffe) cannot parse SM2 certificates.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	a *Agent
}

// checkHeader enforces the Workload API's security header.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// callerSelectors attests the calling process.
func (a *Agent) callerSelectors(ctx context.Context) (map[string]bool, error) {
	info, ok := peercred.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "caller credentials unavailable")
	}
	sel := map[string]bool{}
	for _, att := range a.cfg.WorkloadAttestors {
		ss, err := att.Attest(ctx, info.Peer())
		if err != nil {
			a.log.Warn("workload attestation failed", "attestor", att.Name(), "pid", info.PID, "err", err)
			return nil, status.Errorf(codes.Unavailable, "workload attestation (%s) failed: %v", att.Name(), err)
		}
		for _, s := range ss {
			sel[s.Type+":"+s.Value] = true
		}
	}
	return sel, nil
}

func concat(ders [][]byte) []byte { return bytes.Join(ders, nil) }

// FetchX509SVID streams the caller's X509-SVIDs: at once, then at every
// change. A caller matching no entry gets PermissionDenied.
func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	sel, err := w.a.callerSelectors(ctx)
	if err != nil {
		return err
	}
	var last *workload.X509SVIDResponse
	granted := false
	for {
		changed := w.a.store.changed()
		svids, complete, matched, _ := w.a.store.matching(sel, w.a.cfg.Clock.Now())
		if !matched {
			info, _ := peercred.FromContext(ctx)
			w.a.log.Info("workload api", "decision", "deny", "method", "FetchX509SVID", "pid", info.PID, "uid", info.UID, "reason", "no entry matches", "selectors", len(sel))
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		if complete && len(svids) > 0 {
			resp := &workload.X509SVIDResponse{}
			for _, v := range svids {
				resp.Svids = append(resp.Svids, &workload.X509SVID{
					SpiffeId: v.entry.SpiffeId, X509Svid: concat(v.chain), X509SvidKey: v.keyDER,
					Bundle: concat(w.a.id.rootsOf(v.entry.Profile)),
				})
			}
			if last == nil || !proto.Equal(resp, last) {
				if !granted {
					info, _ := peercred.FromContext(ctx)
					ids := make([]string, len(resp.Svids))
					for i, v := range resp.Svids {
						ids[i] = v.SpiffeId
					}
					w.a.log.Info("workload api", "decision", "allow", "method", "FetchX509SVID", "pid", info.PID, "uid", info.UID, "spiffe_ids", ids)
					granted = true
				}
				if err := stream.Send(resp); err != nil {
					return err
				}
				last = resp
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// FetchX509Bundles streams the trust domain's ECDSA roots.
func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	var last []byte
	for {
		changed := w.a.store.changed()
		roots := concat(w.a.id.rootsOf(ca.ProfileECDSA))
		if len(roots) > 0 && !bytes.Equal(roots, last) {
			td := w.a.id.td.IDString()
			if err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{td: roots}}); err != nil {
				return err
			}
			last = roots
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
