package agent

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/meshca/meshca/agent/peercred"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/wlapi"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ProfilesMetadataKey is the gRPC request metadata key with which a
// Workload API client names the X.509 profiles it can parse: a
// comma-separated list of profile names ("ecdsa", "sm2"), e.g.
// "meshca-profiles: sm2" or "meshca-profiles: ecdsa,sm2"; the key may also
// be repeated. FetchX509SVID serves the SVIDs of those profiles only. A
// client that sends no such key is a standard client (go-spiffe,
// spire-agent, Envoy with BoringSSL) and gets ECDSA SVIDs only, because
// crypto/x509 and BoringSSL cannot parse SM2 certificates: one SM2 entry
// must not break every standard client of a workload. `meshca workload
// fetch --profile sm2` sends it. Clients send it with package
// internal/wlapi, which defines it.
const ProfilesMetadataKey = wlapi.ProfilesMetadataKey

// DefaultProfiles are the X.509 profiles served to a client that does not
// send ProfilesMetadataKey.
var DefaultProfiles = []string{ca.ProfileECDSA}

// workloadAPI is the SPIFFE Workload API on the agent's socket.
//
// FetchX509SVID serves each client the X509-SVIDs of the profiles it asks
// for with ProfilesMetadataKey (ECDSA only by default), in the default
// order (see sortSVIDs); each SVID's bundle holds the roots of its profile.
// FetchX509Bundles serves the ECDSA roots only: crypto/x509-based clients
// (go-spiffe) cannot parse SM2 certificates.
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

// requestedProfiles returns the X.509 profiles the client asks for with
// ProfilesMetadataKey, DefaultProfiles when it names none. An unknown or
// empty profile name is an InvalidArgument error: the client must not
// retry.
func requestedProfiles(ctx context.Context) (map[string]bool, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(ProfilesMetadataKey)
	if len(values) == 0 {
		values = DefaultProfiles
	}
	out := map[string]bool{}
	for _, v := range values {
		for _, name := range strings.Split(v, ",") {
			name = strings.TrimSpace(name)
			if _, err := ca.ProfileByName(name); err != nil {
				return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("%s metadata names profile %q: want a comma-separated list of %s", ProfilesMetadataKey, name, profileNames()))
			}
			out[name] = true
		}
	}
	return out, nil
}

func profileNames() string {
	var names []string
	for _, p := range ca.Profiles() {
		names = append(names, p.Name())
	}
	return strings.Join(names, ", ")
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

// FetchX509SVID streams the caller's X509-SVIDs of the profiles it asks
// for (see ProfilesMetadataKey), in the default order: at once, then at
// every change. A caller matching no entry of those profiles gets
// PermissionDenied.
func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	profiles, err := requestedProfiles(ctx)
	if err != nil {
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
		m := w.a.store.matching(sel, profiles, w.a.cfg.Clock.Now())
		svids, complete := m.svids, m.complete
		if !m.matched {
			info, _ := peercred.FromContext(ctx)
			reason, msg := "no entry matches", "no identity issued"
			if len(m.otherProfiles) > 0 {
				// The caller's own entitlements: telling it which profiles
				// it would have to ask for leaks nothing.
				reason = "only entries of profiles not asked for match"
				msg = fmt.Sprintf("no identity issued of the profiles asked for (%s); this workload has %s X509-SVIDs, served only to clients that send %q metadata naming them",
					strings.Join(sortedProfiles(profiles), ","), strings.Join(m.otherProfiles, ", "), ProfilesMetadataKey)
			}
			w.a.events.Record(audit.Event{Actor: callerActor(info), Action: "workload.fetch_x509_svid", Decision: audit.Deny, Reason: reason,
				Details: map[string]string{"selectors": strconv.Itoa(len(sel))}})
			return status.Error(codes.PermissionDenied, msg)
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
					w.a.events.Record(audit.Event{Actor: callerActor(info), Action: "workload.fetch_x509_svid", Subject: strings.Join(ids, " "), Decision: audit.Allow})
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

// callerActor names a calling process in audit events.
func callerActor(info peercred.AuthInfo) string {
	return "pid " + strconv.Itoa(int(info.PID)) + " uid " + strconv.FormatUint(uint64(info.UID), 10)
}
