package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// issue 12: OPA authorization bundles. An operator pushes a directory of
// Rego and data files; the server that takes the push compiles it, builds
// an OPA bundle with the next revision in its manifest, signs it with the
// trust domain's OPA key (ES256, sealed in the replicated state like the
// JWT keys) and stores it through Raft. Every server serves every bundle's
// latest revision over OPA's bundle service API (BundleAddr).

// DefaultBundleKeep is how many revisions of each bundle are kept.
const DefaultBundleKeep = 16

// opaKey returns the trust domain's OPA signing key, creating it on first
// use, opened.
func (s *Server) opaKey(ctx context.Context) (*raftpb.OPAKey, *ecdsa.PrivateKey, error) {
	k := s.fsm.Read().OPAKey()
	if k == nil {
		key, err := ca.ECDSA.GenerateKey()
		if err != nil {
			return nil, nil, err
		}
		pub, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return nil, nil, err
		}
		kid := "meshca-opa-" + cluster.NewRequestID()[:16]
		sealed, err := ca.SealKey(s.cfg.KEK, ca.ECDSA, "opa/"+kid, key)
		if err != nil {
			return nil, nil, err
		}
		b, err := json.Marshal(sealed)
		if err != nil {
			return nil, nil, err
		}
		nk := &raftpb.OPAKey{Kid: kid, PublicKey: pub, SealedKey: b, CreatedUnix: s.cfg.Clock.Now().Unix()}
		_, err = s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutOpaKey{PutOpaKey: &raftpb.PutOPAKey{Key: nk}}})
		if err != nil && !errors.Is(err, raftfsm.ErrAlreadyExists) {
			return nil, nil, err
		}
		if err := s.node.ReadIndex(ctx); err != nil {
			return nil, nil, err
		}
		if k = s.fsm.Read().OPAKey(); k == nil {
			return nil, nil, errors.New("the OPA key was not stored")
		}
	}
	var sk ca.SealedKey
	if err := json.Unmarshal(k.SealedKey, &sk); err != nil {
		return nil, nil, fmt.Errorf("OPA key %s: %w", k.Kid, err)
	}
	signer, err := sk.Open(s.cfg.KEK)
	if err != nil {
		return nil, nil, fmt.Errorf("OPA key %s: %w", k.Kid, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("OPA key %s is a %T, not an ECDSA key", k.Kid, signer)
	}
	return k, key, nil
}

// publishBundle builds, signs and stores files as the next revision of a
// bundle; rollbackOf names the revision it republishes, if any.
func (s *Server) publishBundle(ctx context.Context, name string, files []*raftpb.PolicyFile, rollbackOf uint64) (*raftpb.OPABundle, error) {
	if err := policy.CheckName(name); err != nil {
		return nil, err
	}
	// Refuse bad input before anything is written (the key included).
	if _, err := policy.Build(fromRaftFiles(files), policy.BuildOptions{Revision: 1, Key: s.checkKey(), KeyID: "check", MaxSize: s.cfg.BundleMaxSize}); err != nil {
		return nil, err
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return nil, err
	}
	k, key, err := s.opaKey(ctx)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if err := s.node.ReadIndex(ctx); err != nil {
			return nil, err
		}
		rev := uint64(1)
		if cur := s.fsm.Read().OPABundle(name, 0); cur != nil {
			rev = cur.Revision + 1
		}
		built, err := policy.Build(fromRaftFiles(files), policy.BuildOptions{Revision: rev, Key: key, KeyID: k.Kid, MaxSize: s.cfg.BundleMaxSize})
		if err != nil {
			return nil, err
		}
		b := &raftpb.OPABundle{Name: name, Revision: rev, Bundle: built.Bytes, Files: files, Sha256: built.SHA256[:],
			CreatedUnixNano: s.cfg.Clock.Now().UnixNano(), Author: adminActor(ctx), RollbackOf: rollbackOf, Kid: k.Kid}
		_, err = s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutOpaBundle{PutOpaBundle: &raftpb.PutOPABundle{Bundle: b, Keep: uint32(s.cfg.BundleKeep)}}})
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, raftfsm.ErrConflict) || attempt == maxRevisionRetries {
			return nil, err
		}
	}
}

// checkKey is a throw-away key that signs the trial build of a push.
func (s *Server) checkKey() *ecdsa.PrivateKey {
	s.checkKeyOnce.Do(func() {
		k, err := ca.ECDSA.GenerateKey()
		if err == nil {
			s.checkKeyVal, _ = k.(*ecdsa.PrivateKey)
		}
	})
	return s.checkKeyVal
}

func bundleInfo(b *raftpb.OPABundle) *operatorpb.BundleInfo {
	info := &operatorpb.BundleInfo{Name: b.Name, Revision: b.Revision, Sha256: hex.EncodeToString(b.Sha256), Size: uint64(len(b.Bundle)),
		CreatedUnix: b.CreatedUnixNano / 1e9, Author: b.Author, RollbackOf: b.RollbackOf, Kid: b.Kid}
	for _, f := range b.Files {
		info.Files = append(info.Files, f.Path)
	}
	return info
}

func (o *operatorService) auditBundle(ctx context.Context, action, name string, b *raftpb.OPABundle, err error) {
	if err != nil {
		o.s.auditOp(ctx, action, name, audit.Deny, status.Convert(policyStatus(err)).Message(), nil)
		return
	}
	d := map[string]string{"revision": strconv.FormatUint(b.Revision, 10), "sha256": hex.EncodeToString(b.Sha256)}
	if b.RollbackOf != 0 {
		d["rollback_of"] = strconv.FormatUint(b.RollbackOf, 10)
	}
	o.s.auditOp(ctx, action, name, audit.Allow, "", d)
}

// PushBundle publishes a new revision of a bundle.
func (o *operatorService) PushBundle(ctx context.Context, req *operatorpb.PushBundleRequest) (*operatorpb.BundleResponse, error) {
	b, err := o.s.publishBundle(ctx, req.Name, toRaftFiles(req.Files), 0)
	o.auditBundle(ctx, "policy.push", req.Name, b, err)
	if err != nil {
		return nil, policyStatus(err)
	}
	return &operatorpb.BundleResponse{Info: bundleInfo(b)}, nil
}

// RollbackBundle publishes an earlier revision's files as a new revision.
func (o *operatorService) RollbackBundle(ctx context.Context, req *operatorpb.RollbackBundleRequest) (*operatorpb.BundleResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	old := o.s.fsm.Read().OPABundle(req.Name, req.Revision)
	if old == nil || req.Revision == 0 {
		err := status.Errorf(codes.NotFound, "bundle %q has no revision %d kept (see meshca policy list --name %s)", req.Name, req.Revision, req.Name)
		o.auditBundle(ctx, "policy.rollback", req.Name, nil, err)
		return nil, err
	}
	b, err := o.s.publishBundle(ctx, req.Name, old.Files, old.Revision)
	o.auditBundle(ctx, "policy.rollback", req.Name, b, err)
	if err != nil {
		return nil, policyStatus(err)
	}
	return &operatorpb.BundleResponse{Info: bundleInfo(b)}, nil
}

// ListBundles lists bundles, or one bundle's revisions.
func (o *operatorService) ListBundles(ctx context.Context, req *operatorpb.ListBundlesRequest) (*operatorpb.ListBundlesResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	bs := r.OPABundleNames()
	if req.Name != "" {
		bs = r.OPABundles(req.Name)
		if len(bs) == 0 {
			return nil, status.Errorf(codes.NotFound, "no bundle %q", req.Name)
		}
	}
	resp := &operatorpb.ListBundlesResponse{}
	for _, b := range bs {
		resp.Bundles = append(resp.Bundles, bundleInfo(b))
	}
	return resp, nil
}

// GetBundle returns one revision of a bundle with its files.
func (o *operatorService) GetBundle(ctx context.Context, req *operatorpb.GetBundleRequest) (*operatorpb.BundleResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	b := o.s.fsm.Read().OPABundle(req.Name, req.Revision)
	if b == nil {
		return nil, status.Errorf(codes.NotFound, "bundle %q has no revision %d kept", req.Name, req.Revision)
	}
	return &operatorpb.BundleResponse{Info: bundleInfo(b), Files: toPBFiles(b.Files), Bundle: b.Bundle}, nil
}

// GetOPAKey returns the OPA bundle verification key, creating the key on
// first use.
func (o *operatorService) GetOPAKey(ctx context.Context, _ *operatorpb.GetOPAKeyRequest) (*operatorpb.GetOPAKeyResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	k, _, err := o.s.opaKey(ctx)
	if err != nil {
		return nil, fsmStatus(err)
	}
	return &operatorpb.GetOPAKeyResponse{Kid: k.Kid, Algorithm: policy.SigningAlg, PublicKeyPem: string(policy.PublicKeyPEM(k.PublicKey))}, nil
}

// bundleSource serves the replicated state's bundles.
type bundleSource struct{ fsm *raftfsm.FSM }

func (b bundleSource) Bundle(name string) (*policy.Served, <-chan struct{}) {
	changed := b.fsm.Watch(raftfsm.ScopeOPABundle(name))
	cur := b.fsm.Read().OPABundle(name, 0)
	if cur == nil {
		return nil, changed
	}
	return &policy.Served{Revision: cur.Revision, Bytes: cur.Bundle, SHA256: cur.Sha256}, changed
}

// bundleServer is the OPA bundle service listener: HTTPS with a
// certificate naming the server's SPIFFE ID and BundleDNSNames, clients
// authenticated by an X509-SVID of the trust domain or a bundle token.
type bundleServer struct {
	s   *Server
	ln  net.Listener
	srv *http.Server

	mu     sync.Mutex
	cert   *tls.Certificate
	renew  time.Time
	issuer []byte
}

func (s *Server) newBundleServer() (*bundleServer, error) {
	ln, err := net.Listen("tcp", s.cfg.BundleAddr)
	if err != nil {
		return nil, fmt.Errorf("bundle service address: %w", err)
	}
	bs := &bundleServer{s: s, ln: ln}
	svc := &policy.BundleService{
		Source:    bundleSource{fsm: s.fsm},
		Clock:     s.cfg.Clock,
		Authorize: s.authorizeBundleFetch,
		Audit:     s.auditBundleFetch,
	}
	mux := http.NewServeMux()
	mux.Handle("/bundles/", svc)
	mux.Handle("/v1/bundles/", svc)
	bs.srv = &http.Server{
		Handler:           http.MaxBytesHandler(mux, 64<<10),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			Time:           s.cfg.Clock.Now,
			GetCertificate: bs.certificate,
			// A client certificate is verified per request (Authorize), by
			// chain to the roots; a client with a bundle token sends none.
			ClientAuth: tls.RequestClientCert,
		},
	}
	return bs, nil
}

// certificate returns the listener's certificate, issued by this server's
// ECDSA intermediate and renewed at half-life or when the intermediate
// changes. It is the server's own serving certificate, like its cluster
// one, so it has no ledger record.
func (bs *bundleServer) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s := bs.s
	iss, ok := s.issuer(ca.ProfileECDSA)
	if !ok {
		return nil, errors.New("no ECDSA intermediate")
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	now := s.cfg.Clock.Now()
	if bs.cert != nil && now.Before(bs.renew) && string(bs.issuer) == string(iss.Certificate().Raw) {
		return bs.cert, nil
	}
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		return nil, err
	}
	sid, err := naming.ServerID(s.td, s.cfg.NodeID)
	if err != nil {
		return nil, err
	}
	svid, err := iss.SignX509SVID(context.Background(), ca.X509SVIDParams{CSR: csr, SPIFFEID: sid.String(), DNSNames: s.cfg.BundleDNSNames, TTL: ServerCertTTL})
	if err != nil {
		return nil, fmt.Errorf("bundle service certificate: %w", err)
	}
	bs.cert = &tls.Certificate{Certificate: svid.Certificates, PrivateKey: key}
	bs.renew = svid.NotBefore.Add(svid.NotAfter.Sub(svid.NotBefore) / 2)
	bs.issuer = iss.Certificate().Raw
	return bs.cert, nil
}

// BundleAddr is the address of the OPA bundle service, if configured.
func (s *Server) BundleAddr() string {
	if s.bundles == nil {
		return ""
	}
	return s.bundles.ln.Addr().String()
}
