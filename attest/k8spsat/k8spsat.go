// Package k8spsat is the k8s_psat node attestation method: the agent, a
// pod of a Kubernetes cluster (usually a DaemonSet), presents a projected
// service account token (PSAT) that the cluster's API server signed for
// the audience of meshca. The server validates it offline, against the
// cluster's service account issuer keys (a static JWKS, as served at
// <issuer>/openid/v1/jwks), without calling the API server.
//
// The payload is {"cluster": "<name>", "token": "<JWT>"}. The token must
// be signed with RS256 or ES256 by a key of the cluster's JWKS, selected by
// the kid header; its iss must be the cluster's issuer, its aud must
// contain the configured audience, it must carry exp and be valid at the
// server's clock with 30 s of leeway; and its kubernetes.io claim must
// name the pod and the node (pod-bound tokens, Kubernetes 1.30+ with
// ServiceAccountTokenPodNodeInfo, GA in 1.32).
//
// The agent's ID is spiffe://<td>/meshca/agent/k8s_psat/<cluster>/<node
// UID>. Selectors:
//
//	k8s_psat:cluster:<cluster>
//	k8s_psat:agent_ns:<namespace>
//	k8s_psat:agent_sa:<service account>
//	k8s_psat:agent_pod_name:<pod name>
//	k8s_psat:agent_pod_uid:<pod UID>
//	k8s_psat:agent_node_name:<node name>
//
// Limits of offline validation: the server cannot see that the pod was
// deleted, so keep token lifetimes short (expirationSeconds, 10 min is the
// minimum Kubernetes allows), and the node name in a pod-bound token is
// what the API server recorded for the pod, not something the node proved.
package k8spsat

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/internal/jsonpayload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Name is the attestation method and the type of its selectors.
const Name = "k8s_psat"

// Defaults and limits.
const (
	// DefaultAudience is the audience tokens must be made for, unless a
	// cluster configures another.
	DefaultAudience = "meshca"
	// Leeway is the clock skew tolerated on exp, nbf and iat.
	Leeway = 30 * time.Second
	// MaxTokenSize bounds a token.
	MaxTokenSize = 16 << 10
	// DefaultTokenPath is where the agent's pod mounts its projected token.
	DefaultTokenPath = "/var/run/secrets/tokens/meshca-agent"
)

// algorithms are the token signature algorithms accepted.
var algorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// ClusterConfig describes one Kubernetes cluster whose agents may attest.
type ClusterConfig struct {
	// Name of the cluster, in agent IDs and selectors. Required; letters,
	// digits, '.', '-' and '_' (a SPIFFE ID path segment).
	Name string
	// Issuer is the cluster's service account issuer
	// (--service-account-issuer), matched exactly against iss. Required.
	Issuer string
	// Audience tokens must be made for. Default: DefaultAudience.
	Audience string
	// JWKS holds the issuer's public keys; each must have a kid. Private
	// keys are reduced to their public part.
	JWKS jose.JSONWebKeySet
	// AllowedServiceAccounts, as "namespace:name", are the only service
	// accounts whose tokens are accepted. Empty: any service account.
	AllowedServiceAccounts []string
}

// Config configures the server side of k8s_psat.
type Config struct {
	// TrustDomain of the agents' IDs. Required.
	TrustDomain spiffeid.TrustDomain
	// Clusters whose agents may attest. At least one.
	Clusters []ClusterConfig
	// Clock gives the time at which tokens must be valid.
	// Default: the real clock.
	Clock clockwork.Clock
}

type cluster struct {
	name, issuer, audience string
	keys                   map[string][]jose.JSONWebKey // by kid
	allowed                map[string]bool              // "ns:sa"; nil = any
}

// Attestor is the server side of k8s_psat.
type Attestor struct {
	td       spiffeid.TrustDomain
	clusters map[string]*cluster
	clock    clockwork.Clock
}

var _ attest.NodeAttestor = (*Attestor)(nil)

// New validates cfg and returns a k8s_psat attestor.
func New(cfg Config) (*Attestor, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("k8s_psat: no trust domain configured")
	}
	if len(cfg.Clusters) == 0 {
		return nil, errors.New("k8s_psat: no cluster configured")
	}
	a := &Attestor{td: cfg.TrustDomain, clusters: map[string]*cluster{}, clock: cfg.Clock}
	if a.clock == nil {
		a.clock = clockwork.NewRealClock()
	}
	for _, cc := range cfg.Clusters {
		c, err := newCluster(cfg.TrustDomain, cc)
		if err != nil {
			return nil, fmt.Errorf("k8s_psat: cluster %q: %w", cc.Name, err)
		}
		if a.clusters[c.name] != nil {
			return nil, fmt.Errorf("k8s_psat: cluster %q is configured twice", c.name)
		}
		a.clusters[c.name] = c
	}
	return a, nil
}

func newCluster(td spiffeid.TrustDomain, cc ClusterConfig) (*cluster, error) {
	if _, err := attest.AgentID(td, Name, cc.Name, "node"); err != nil || cc.Name == "" {
		return nil, errors.New("name must be non-empty letters, digits, '.', '-' or '_'")
	}
	if cc.Issuer == "" {
		return nil, errors.New("no issuer")
	}
	c := &cluster{name: cc.Name, issuer: cc.Issuer, audience: cc.Audience, keys: map[string][]jose.JSONWebKey{}}
	if c.audience == "" {
		c.audience = DefaultAudience
	}
	if len(cc.JWKS.Keys) == 0 {
		return nil, errors.New("JWKS has no keys")
	}
	for i, k := range cc.JWKS.Keys {
		if k.KeyID == "" {
			return nil, fmt.Errorf("JWKS key %d has no kid", i)
		}
		pub := k.Public()
		if !pub.Valid() {
			return nil, fmt.Errorf("JWKS key %q is not a valid RSA or EC key", k.KeyID)
		}
		if k.Use != "" && k.Use != "sig" {
			return nil, fmt.Errorf("JWKS key %q is for %q, not signatures", k.KeyID, k.Use)
		}
		c.keys[k.KeyID] = append(c.keys[k.KeyID], pub)
	}
	if len(cc.AllowedServiceAccounts) > 0 {
		c.allowed = map[string]bool{}
		for _, sa := range cc.AllowedServiceAccounts {
			ns, name, ok := strings.Cut(sa, ":")
			if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
				return nil, fmt.Errorf("allowed service account %q: want namespace:name", sa)
			}
			c.allowed[sa] = true
		}
	}
	return c, nil
}

// Name returns "k8s_psat".
func (a *Attestor) Name() string { return Name }

// ref is a name and UID in the kubernetes.io claim.
type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// k8sClaims is the private kubernetes.io claim of a service account token.
type k8sClaims struct {
	Namespace      string `json:"namespace"`
	ServiceAccount ref    `json:"serviceaccount"`
	Pod            *ref   `json:"pod,omitempty"`
	Node           *ref   `json:"node,omitempty"`
}

type privateClaims struct {
	K8s *k8sClaims `json:"kubernetes.io"`
}

// Attest validates the token offline and returns the agent's node
// identity. No challenge is used; challenge may be nil.
func (a *Attestor) Attest(_ context.Context, payload []byte, _ attest.Challenge) (*attest.NodeResult, error) {
	p, err := decodePayload(payload)
	if err != nil {
		return nil, err
	}
	c := a.clusters[p.Cluster]
	if c == nil {
		return nil, notAuthorized(fmt.Sprintf("unknown cluster %q", p.Cluster), nil)
	}
	tok, err := jwt.ParseSigned(p.Token, algorithms)
	if err != nil {
		// Well formed with another algorithm (HS256, none...) is a refusal;
		// anything else is malformed.
		if alg := headerAlgorithm(p.Token); alg != "" && !slices.Contains(algorithms, jose.SignatureAlgorithm(alg)) {
			return nil, notAuthorized(fmt.Sprintf("token signature algorithm %q is not allowed (want RS256 or ES256)", truncate(alg, 32)), nil)
		}
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "token is not a compact JWS", err)
	}
	if len(tok.Headers) != 1 {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "token must have exactly one signature", nil)
	}
	hdr := tok.Headers[0]
	keys := c.keys[hdr.KeyID]
	if len(keys) == 0 {
		return nil, notAuthorized(fmt.Sprintf("unknown key id %q for cluster %q", truncate(hdr.KeyID, 64), c.name), nil)
	}
	var raw json.RawMessage
	verified := false
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != hdr.Algorithm {
			continue
		}
		if err := tok.Claims(k.Key, &raw); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, notAuthorized(fmt.Sprintf("token signature does not verify with key %q (%s)", hdr.KeyID, hdr.Algorithm), nil)
	}
	var std jwt.Claims
	var priv privateClaims
	if err := json.Unmarshal(raw, &std); err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "token registered claims are malformed", nil)
	}
	if err := json.Unmarshal(raw, &priv); err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "token kubernetes.io claim is malformed", nil)
	}
	if err := c.validate(&std, a.clock.Now()); err != nil {
		return nil, err
	}
	return a.result(c, &std, priv.K8s)
}

// validate checks iss, aud, exp, nbf and iat.
func (c *cluster) validate(std *jwt.Claims, now time.Time) error {
	if std.Expiry == nil {
		return notAuthorized("token has no expiry (exp)", nil)
	}
	err := std.ValidateWithLeeway(jwt.Expected{Issuer: c.issuer, AnyAudience: jwt.Audience{c.audience}, Time: now}, Leeway)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jwt.ErrExpired):
		return notAuthorized(fmt.Sprintf("token expired at %s", std.Expiry.Time().UTC().Format(time.RFC3339)), err)
	case errors.Is(err, jwt.ErrNotValidYet):
		return notAuthorized(fmt.Sprintf("token is not valid before %s", std.NotBefore.Time().UTC().Format(time.RFC3339)), err)
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return notAuthorized("token is issued in the future", err)
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return notAuthorized(fmt.Sprintf("token issuer %q is not the cluster's issuer %q", truncate(std.Issuer, 256), c.issuer), err)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return notAuthorized(fmt.Sprintf("token audience does not include %q", c.audience), err)
	}
	return notAuthorized("token claims are invalid", err)
}

func (a *Attestor) result(c *cluster, std *jwt.Claims, k *k8sClaims) (*attest.NodeResult, error) {
	invalid := func(msg string) error { return attest.NewError(attest.KindInvalidEvidence, Name, msg, nil) }
	switch {
	case k == nil:
		return nil, invalid("token has no kubernetes.io claim: not a service account token")
	case k.Namespace == "" || k.ServiceAccount.Name == "":
		return nil, invalid("token names no namespace or service account")
	case k.Pod == nil || k.Pod.Name == "" || k.Pod.UID == "":
		return nil, invalid("token is not bound to a pod (use a projected service account token)")
	case k.Node == nil || k.Node.Name == "" || k.Node.UID == "":
		return nil, invalid("token names no node (needs Kubernetes 1.30+ pod-bound tokens with node info)")
	}
	sa := k.Namespace + ":" + k.ServiceAccount.Name
	if std.Subject != "" && std.Subject != "system:serviceaccount:"+sa {
		return nil, notAuthorized("token subject does not match its kubernetes.io claim", nil)
	}
	if c.allowed != nil && !c.allowed[sa] {
		return nil, notAuthorized(fmt.Sprintf("service account %q of cluster %q is not allowed to attest agents", truncate(sa, 256), c.name), nil)
	}
	id, err := attest.AgentID(a.td, Name, c.name, k.Node.UID)
	if err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "node UID cannot be part of a SPIFFE ID", err)
	}
	sels := []attest.Selector{
		{Type: Name, Value: "cluster:" + c.name},
		{Type: Name, Value: "agent_ns:" + k.Namespace},
		{Type: Name, Value: "agent_sa:" + k.ServiceAccount.Name},
		{Type: Name, Value: "agent_pod_name:" + k.Pod.Name},
		{Type: Name, Value: "agent_pod_uid:" + k.Pod.UID},
		{Type: Name, Value: "agent_node_name:" + k.Node.Name},
	}
	for _, s := range sels {
		if err := s.Validate(); err != nil {
			return nil, attest.NewError(attest.KindInvalidEvidence, Name, "token claim cannot be a selector", err)
		}
	}
	return &attest.NodeResult{AgentID: id, Selectors: sels}, nil
}

// headerAlgorithm returns the alg of a compact JWS's header, or "".
func headerAlgorithm(token string) string {
	h, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return ""
	}
	var hdr struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(b, &hdr) != nil {
		return ""
	}
	return hdr.Alg
}

func notAuthorized(msg string, err error) error {
	return attest.NewError(attest.KindNotAuthorized, Name, msg, err)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// payload is the JSON evidence.
type payload struct {
	Cluster string `json:"cluster"`
	Token   string `json:"token"`
}

func decodePayload(b []byte) (*payload, error) {
	var p payload
	if err := jsonpayload.Decode(b, attest.MaxPayloadSize, &p); err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "payload", err)
	}
	invalid := func(msg string) error { return attest.NewError(attest.KindInvalidEvidence, Name, msg, nil) }
	switch {
	case p.Cluster == "" || len(p.Cluster) > 253:
		return nil, invalid(fmt.Sprintf("cluster name is %d bytes, want 1 to 253", len(p.Cluster)))
	case p.Token == "" || len(p.Token) > MaxTokenSize:
		return nil, invalid(fmt.Sprintf("token is %d bytes, want 1 to %d", len(p.Token), MaxTokenSize))
	}
	return &p, nil
}

// Evidence is the agent side of k8s_psat.
type Evidence struct {
	cluster, path string
}

var _ attest.NodeEvidence = (*Evidence)(nil)

// NewEvidence returns evidence for the cluster named cluster (as the
// server's configuration names it) that reads the projected token at
// tokenPath each time Payload is called, since the kubelet rotates it.
// An empty tokenPath means DefaultTokenPath.
func NewEvidence(cluster, tokenPath string) *Evidence {
	if tokenPath == "" {
		tokenPath = DefaultTokenPath
	}
	return &Evidence{cluster: cluster, path: tokenPath}
}

// Name returns "k8s_psat".
func (e *Evidence) Name() string { return Name }

// Payload reads the token file and returns {"cluster": ..., "token": ...}.
func (e *Evidence) Payload() ([]byte, error) {
	f, err := os.Open(e.path)
	if err != nil {
		return nil, fmt.Errorf("%s: read token: %w", Name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read token %s: %w", Name, e.path, err)
	}
	if len(b) > MaxTokenSize {
		return nil, fmt.Errorf("%s: token file %s is larger than %d bytes", Name, e.path, MaxTokenSize)
	}
	tok := string(bytes.TrimSpace(b))
	if tok == "" {
		return nil, fmt.Errorf("%s: token file %s is empty", Name, e.path)
	}
	if e.cluster == "" {
		return nil, fmt.Errorf("%s: no cluster name", Name)
	}
	return json.Marshal(payload{Cluster: e.cluster, Token: tok})
}

// Respond fails: k8s_psat has no challenge.
func (e *Evidence) Respond([]byte) ([]byte, error) {
	return nil, fmt.Errorf("%s: no challenge/response in this method", Name)
}
