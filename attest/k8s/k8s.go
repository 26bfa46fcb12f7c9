// Package k8s is the k8s workload attestation method: the selectors of a
// process running in a Kubernetes pod on the agent's node.
//
// The pod UID and container ID come from /proc/<pid>/cgroup (cgroup v1 or
// v2, cgroupfs or systemd driver); the pod comes from the kubelet's
// GET /pods endpoint, matched by UID, and the container by the ID at the
// end of its status's containerID ("containerd://<id>"). Selectors:
//
//	k8s:ns:<namespace>             k8s:sa:<service account>
//	k8s:pod-name:<name>            k8s:pod-uid:<uid>
//	k8s:pod-label:<key>:<value>    (one per label, sorted by key)
//	k8s:container-name:<name>      k8s:node-name:<node>
//
// A process that is not in a pod (no pod in its cgroups) gets no selectors
// and no error, so that the agent can run this attestor beside unix for
// host processes. A process in a pod the kubelet does not know, or in no
// container of it, is refused with ErrNotAuthorized after one fresh
// retry; an unreachable kubelet is ErrUnavailable.
//
// The pod list is cached for Config.CacheTTL, and concurrent attestations
// share one request, so a burst of workloads costs the kubelet one call.
package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/internal/procfs"
)

// Name is the attestation method and the type of its selectors.
const Name = "k8s"

// Defaults.
const (
	DefaultKubeletURL      = "https://127.0.0.1:10250"
	DefaultTimeout         = 5 * time.Second
	DefaultCacheTTL        = time.Second
	DefaultRetryDelay      = 250 * time.Millisecond
	DefaultMaxResponseSize = 64 << 20
	maxTokenFileSize       = 64 << 10
)

// Config configures the k8s workload attestor. The zero value is valid:
// the kubelet on https://127.0.0.1:10250, verified against the system
// roots, without credentials.
type Config struct {
	// KubeletURL is the kubelet's base URL; /pods is appended.
	// Default: DefaultKubeletURL.
	KubeletURL string
	// TokenFile holds a bearer token for the kubelet (usually the agent's
	// service account token), read at each request since it rotates.
	// Default: no Authorization header.
	TokenFile string
	// CAFile is a PEM file of the CAs that issue the kubelet's serving
	// certificate. Default: the system roots.
	CAFile string
	// InsecureSkipVerify disables verification of the kubelet's
	// certificate (kubelets often serve a self-signed one). It cannot be
	// combined with CAFile. Default: verify.
	InsecureSkipVerify bool
	// ProcRoot is where procfs is mounted. Default: /proc.
	ProcRoot string
	// Timeout bounds one request to the kubelet. Default: DefaultTimeout.
	Timeout time.Duration
	// CacheTTL is how long a pod list is reused. Default: DefaultCacheTTL;
	// negative: never reused.
	CacheTTL time.Duration
	// RetryDelay is the wait before fetching the pod list again when a pod
	// or container is not in it (its status may lag its start).
	// Default: DefaultRetryDelay.
	RetryDelay time.Duration
	// MaxResponseSize bounds the kubelet's answer.
	// Default: DefaultMaxResponseSize.
	MaxResponseSize int64
	// Log receives debug messages. Default: none.
	Log *slog.Logger
	// Clock times the cache and the retries. Default: the real clock.
	Clock clockwork.Clock
}

// Attestor is the k8s workload attestor.
type Attestor struct {
	podsURL   string
	tokenFile string
	client    *http.Client
	root      string
	ttl       time.Duration
	retry     time.Duration
	maxSize   int64
	log       *slog.Logger
	clock     clockwork.Clock

	fetching chan struct{} // one slot, held while a request is in flight

	mu      sync.Mutex // guards the cached list
	cached  *podIndex
	fetched time.Time
}

var _ attest.WorkloadAttestor = (*Attestor)(nil)

// New validates cfg and returns a k8s workload attestor. It makes no
// request.
func New(cfg Config) (*Attestor, error) {
	base := cfg.KubeletURL
	if base == "" {
		base = DefaultKubeletURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("k8s: kubelet URL %q: want https://host:port", base)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case cfg.InsecureSkipVerify && cfg.CAFile != "":
		return nil, errors.New("k8s: set either a kubelet CA file or insecure-skip-verify, not both")
	case cfg.InsecureSkipVerify:
		tlsConf.InsecureSkipVerify = true
	case cfg.CAFile != "":
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("k8s: kubelet CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("k8s: kubelet CA %s holds no PEM certificate", cfg.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	a := &Attestor{
		podsURL: strings.TrimSuffix(u.String(), "/") + "/pods", tokenFile: cfg.TokenFile,
		root: cfg.ProcRoot, ttl: cfg.CacheTTL, retry: cfg.RetryDelay, maxSize: cfg.MaxResponseSize, log: cfg.Log, clock: cfg.Clock,
		fetching: make(chan struct{}, 1),
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	a.client = &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig: tlsConf, MaxIdleConns: 2, IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: true,
	}}
	if a.root == "" {
		a.root = procfs.DefaultRoot
	}
	if a.ttl == 0 {
		a.ttl = DefaultCacheTTL
	}
	if a.retry <= 0 {
		a.retry = DefaultRetryDelay
	}
	if a.maxSize <= 0 {
		a.maxSize = DefaultMaxResponseSize
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.clock == nil {
		a.clock = clockwork.NewRealClock()
	}
	return a, nil
}

// Name returns "k8s".
func (a *Attestor) Name() string { return Name }

// Attest returns the selectors of the process that connected as peer;
// none if it is not in a pod.
func (a *Attestor) Attest(ctx context.Context, peer attest.Peer) ([]attest.Selector, error) {
	pid := peer.PID
	p, err := procfs.OpenPeer(Name, a.root, peer)
	if err != nil {
		return nil, err
	}
	data, err := p.ReadFile("cgroup", maxCgroupSize)
	if err != nil {
		return nil, err
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	podUID, cid, err := parseCgroups(data)
	if err != nil {
		return nil, attest.NewError(attest.KindNotAuthorized, Name, fmt.Sprintf("pid %d", pid), err)
	}
	if podUID == "" {
		return nil, nil
	}
	if cid == "" {
		return nil, attest.NewError(attest.KindNotAuthorized, Name,
			fmt.Sprintf("pid %d is in pod %s but in none of its containers", pid, podUID), nil)
	}

	var idx *podIndex
	for attempt := 0; ; attempt++ {
		var minGen uint64
		if idx != nil {
			minGen = idx.gen + 1
		}
		if idx, err = a.pods(ctx, minGen); err != nil {
			return nil, err
		}
		pod := idx.byUID[podUID]
		if pod != nil {
			if name, ok := pod.container(cid); ok {
				return pod.selectors(name), nil
			}
		}
		if attempt == 1 {
			if pod == nil {
				return nil, attest.NewError(attest.KindNotAuthorized, Name,
					fmt.Sprintf("no pod for pid %d: the kubelet has no pod %s", pid, podUID), nil)
			}
			return nil, attest.NewError(attest.KindNotAuthorized, Name,
				fmt.Sprintf("no container for pid %d: pod %s/%s has no container %s", pid, pod.Metadata.Namespace, pod.Metadata.Name, shortID(cid)), nil)
		}
		a.log.Debug("k8s: pod or container not in the kubelet's list yet; retrying", "pid", pid, "pod_uid", podUID)
		if alarm.Sleep(ctx, a.clock, a.retry) != nil {
			return nil, attest.NewError(attest.KindUnavailable, Name, "attestation cancelled", ctx.Err())
		}
	}
}

func shortID(cid string) string { return cid[:min(12, len(cid))] }

// pods returns a pod list of generation minGen or later, from the cache if
// it is fresh, otherwise from the kubelet. Concurrent callers share one
// request.
func (a *Attestor) pods(ctx context.Context, minGen uint64) (*podIndex, error) {
	if idx := a.fresh(minGen); idx != nil {
		return idx, nil
	}
	select {
	case a.fetching <- struct{}{}:
	case <-ctx.Done():
		return nil, attest.NewError(attest.KindUnavailable, Name, "attestation cancelled", ctx.Err())
	}
	defer func() { <-a.fetching }()
	// Another caller may have fetched while this one waited.
	if idx := a.fresh(minGen); idx != nil {
		return idx, nil
	}
	idx, err := a.fetch(ctx)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cached != nil {
		idx.gen = a.cached.gen + 1
	} else {
		idx.gen = 1
	}
	a.cached, a.fetched = idx, a.clock.Now()
	return idx, nil
}

func (a *Attestor) fresh(minGen uint64) *podIndex {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cached == nil || a.cached.gen < minGen || a.ttl < 0 || a.clock.Since(a.fetched) >= a.ttl {
		return nil
	}
	return a.cached
}

// fetch asks the kubelet for its pods.
func (a *Attestor) fetch(ctx context.Context) (*podIndex, error) {
	unavailable := func(msg string, err error) error { return attest.NewError(attest.KindUnavailable, Name, msg, err) }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.podsURL, nil)
	if err != nil {
		return nil, unavailable("kubelet request", err)
	}
	req.Header.Set("Accept", "application/json")
	if a.tokenFile != "" {
		tok, err := readToken(a.tokenFile)
		if err != nil {
			return nil, unavailable("kubelet credentials", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, unavailable("kubelet request failed", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		msg := fmt.Sprintf("kubelet answered %s to GET %s", resp.Status, a.podsURL)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			msg += " (check the agent's token file and that its service account may get nodes/proxy)"
		}
		return nil, unavailable(msg, nil)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, a.maxSize+1))
	if err != nil {
		return nil, unavailable("read kubelet pod list", err)
	}
	if int64(len(body)) > a.maxSize {
		return nil, unavailable(fmt.Sprintf("kubelet pod list is larger than %d bytes", a.maxSize), nil)
	}
	idx, err := decodePodList(body)
	if err != nil {
		return nil, unavailable("kubelet pod list", err)
	}
	return idx, nil
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileSize+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxTokenFileSize {
		return "", fmt.Errorf("token file %s is larger than %d bytes", path, maxTokenFileSize)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

// The fields of a v1.PodList this attestor uses.
type (
	podList struct {
		Items []*pod `json:"items"`
	}
	pod struct {
		Metadata struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			UID       string            `json:"uid"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			ServiceAccountName string `json:"serviceAccountName"`
			NodeName           string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			ContainerStatuses          []containerStatus `json:"containerStatuses"`
			InitContainerStatuses      []containerStatus `json:"initContainerStatuses"`
			EphemeralContainerStatuses []containerStatus `json:"ephemeralContainerStatuses"`
		} `json:"status"`
	}
	containerStatus struct {
		Name        string `json:"name"`
		ContainerID string `json:"containerID"` // "<runtime>://<id>"
	}
)

// podIndex is a pod list by UID, with its fetch generation.
type podIndex struct {
	byUID map[string]*pod
	gen   uint64
}

func decodePodList(body []byte) (*podIndex, error) {
	var l podList
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	idx := &podIndex{byUID: make(map[string]*pod, len(l.Items))}
	for _, p := range l.Items {
		if p != nil && p.Metadata.UID != "" {
			idx.byUID[p.Metadata.UID] = p
		}
	}
	return idx, nil
}

// container returns the name of the container with ID cid.
func (p *pod) container(cid string) (string, bool) {
	for _, list := range [][]containerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, c := range list {
			if c.ContainerID == cid || strings.HasSuffix(c.ContainerID, "://"+cid) {
				return c.Name, true
			}
		}
	}
	return "", false
}

func (p *pod) selectors(container string) []attest.Selector {
	var out []attest.Selector
	add := func(v string) {
		if attest.ValidateSelectorValue(v) == nil {
			out = append(out, attest.Selector{Type: Name, Value: v})
		}
	}
	m := &p.Metadata
	add("ns:" + m.Namespace)
	if p.Spec.ServiceAccountName != "" {
		add("sa:" + p.Spec.ServiceAccountName)
	}
	add("pod-name:" + m.Name)
	add("pod-uid:" + m.UID)
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("pod-label:" + k + ":" + m.Labels[k])
	}
	add("container-name:" + container)
	if p.Spec.NodeName != "" {
		add("node-name:" + p.Spec.NodeName)
	}
	return out
}
