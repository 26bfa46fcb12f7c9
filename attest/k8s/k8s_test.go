// Tests of the k8s workload attestor. The kubelet cannot run here: it is
// faked by an httptest TLS server answering GET /pods with a v1.PodList in
// the kubelet's JSON (with fields the attestor ignores), and
// /proc/<pid>/cgroup is faked with files under a temporary proc root.
// The process's own, real /proc entry is attested too (it is in no pod).
package k8s

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/attest"
)

const bearer = "kubelet-reader-token"

// kubelet is a fake kubelet serving /pods.
type kubelet struct {
	srv      *httptest.Server
	requests atomic.Int32
	mu       sync.Mutex
	lists    []string // answers in turn; the last one repeats
	status   int
}

func newKubelet(t *testing.T, lists ...string) *kubelet {
	k := &kubelet{lists: lists, status: http.StatusOK}
	k.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(k.requests.Add(1))
		if r.Method != http.MethodGet || r.URL.Path != "/pods" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+bearer {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.status != http.StatusOK {
			http.Error(w, "boom", k.status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, k.lists[min(n, len(k.lists))-1])
	}))
	t.Cleanup(k.srv.Close)
	return k
}

// config points an attestor at the fake kubelet, trusting its certificate
// through a CA file and authenticating with a token file.
func (k *kubelet) config(t *testing.T, procRoot string) Config {
	dir := t.TempDir()
	ca := filepath.Join(dir, "kubelet-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(bearer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Config{KubeletURL: k.srv.URL, CAFile: ca, TokenFile: tok, ProcRoot: procRoot, RetryDelay: 10 * time.Millisecond}
}

// podListJSON renders a v1.PodList as the kubelet does, with a pod "web" of
// UID uid whose container "app" has ID cid.
func podListJSON(pods ...map[string]any) string {
	b, err := json.Marshal(map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": pods})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func webPod(podUID, containerID string) map[string]any {
	return map[string]any{
		"metadata": map[string]any{
			"name": "web-7d4b9c8f6-x2x9z", "namespace": "shop", "uid": podUID,
			"labels":            map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
			"creationTimestamp": "2026-11-21T10:00:00Z",
			"ownerReferences":   []any{map[string]any{"kind": "ReplicaSet", "name": "web-7d4b9c8f6"}},
		},
		"spec": map[string]any{
			"serviceAccountName": "web", "nodeName": "worker-1",
			"containers":     []any{map[string]any{"name": "app", "image": "shop/web:1.2"}, map[string]any{"name": "envoy", "image": "envoy:v1.36"}},
			"initContainers": []any{map[string]any{"name": "init", "image": "busybox"}},
		},
		"status": map[string]any{
			"phase": "Running", "podIP": "10.0.0.7",
			"containerStatuses": []any{
				map[string]any{"name": "app", "containerID": "containerd://" + containerID, "ready": true, "image": "shop/web:1.2"},
				map[string]any{"name": "envoy", "containerID": "containerd://" + strings.Repeat("e", 64), "ready": true},
			},
			"initContainerStatuses":      []any{map[string]any{"name": "init", "containerID": "containerd://" + strings.Repeat("1", 64)}},
			"ephemeralContainerStatuses": []any{map[string]any{"name": "debugger", "containerID": "cri-o://" + strings.Repeat("d", 64)}},
		},
	}
}

var webSelectors = []string{
	"k8s:ns:shop", "k8s:sa:web", "k8s:pod-name:web-7d4b9c8f6-x2x9z", "k8s:pod-uid:" + uid,
	"k8s:pod-label:app:web", "k8s:pod-label:pod-template-hash:7d4b9c8f6",
	"k8s:container-name:app", "k8s:node-name:worker-1",
}

// fakeProc writes /proc/<pid>/{stat,cgroup} under a temporary root.
func fakeProc(t *testing.T, procs map[int32]string) string {
	root := t.TempDir()
	for pid, cgroup := range procs {
		dir := filepath.Join(root, fmt.Sprint(pid))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (app) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0 0\n", pid)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func strs(sels []attest.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.String())
	}
	return out
}

func TestAttest(t *testing.T) {
	v2 := "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope\n"
	v1 := "12:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n1:name=systemd:/kubepods/burstable/pod" + uid + "/" + cid + "\n"
	k := newKubelet(t, podListJSON(webPod("11111111-2222-3333-4444-555555555555", strings.Repeat("a", 64)), webPod(uid, cid)))
	root := fakeProc(t, map[int32]string{
		10: v2, 11: v1,
		12: "0::/kubepods/burstable/pod" + uid + "/" + strings.Repeat("1", 64) + "\n",
		13: "0::/kubepods/burstable/pod" + uid + "/" + strings.Repeat("d", 64) + "\n",
	})
	a, err := New(k.config(t, root))
	if err != nil {
		t.Fatal(err)
	}
	for pid, container := range map[int32]string{10: "app", 11: "app", 12: "init", 13: "debugger"} {
		sels, err := a.Attest(t.Context(), attest.Peer{PID: pid})
		if err != nil {
			t.Fatalf("Attest(%d) = %v", pid, err)
		}
		want := slices.Clone(webSelectors)
		want[6] = "k8s:container-name:" + container
		if got := strs(sels); !slices.Equal(got, want) {
			t.Errorf("Attest(%d) =\n%s\nwant\n%s", pid, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if n := k.requests.Load(); n != 1 {
		t.Errorf("kubelet got %d requests for 4 attestations within the cache TTL, want 1", n)
	}
}

// TestHostProcess attests this test process through the real /proc. On a
// host (or a CI container outside Kubernetes) it is in no pod: no
// selectors, no error, no kubelet request. Should the tests run inside a
// pod, the fake kubelet does not know that pod, so it is refused.
func TestHostProcess(t *testing.T) {
	k := newKubelet(t, podListJSON())
	a, err := New(k.config(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	inPod, _, err := parseCgroups(own)
	if err != nil {
		t.Fatal(err)
	}
	sels, err := a.Attest(t.Context(), attest.Peer{PID: int32(os.Getpid())})
	if inPod != "" {
		if !errors.Is(err, attest.ErrNotAuthorized) {
			t.Fatalf("Attest(self in pod %s) = %v, %v; want ErrNotAuthorized from a kubelet without that pod", inPod, sels, err)
		}
		return
	}
	if err != nil || sels != nil {
		t.Fatalf("Attest(self) = %v, %v; want no selectors, no error", sels, err)
	}
	if n := k.requests.Load(); n != 0 {
		t.Errorf("kubelet got %d requests for a host process, want 0", n)
	}
}

// TestBurst checks that concurrent attestations share one kubelet request.
func TestBurst(t *testing.T) {
	k := newKubelet(t, podListJSON(webPod(uid, cid)))
	procs := map[int32]string{}
	for pid := int32(100); pid < 120; pid++ {
		procs[pid] = "0::/kubepods/pod" + uid + "/" + cid + "\n"
	}
	a, err := New(k.config(t, fakeProc(t, procs)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(procs))
	for pid := range procs {
		wg.Go(func() {
			if _, err := a.Attest(t.Context(), attest.Peer{PID: pid}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := k.requests.Load(); n != 1 {
		t.Errorf("kubelet got %d requests for a burst of %d attestations, want 1", n, len(procs))
	}
}

func TestNoCache(t *testing.T) {
	k := newKubelet(t, podListJSON(webPod(uid, cid)))
	cfg := k.config(t, fakeProc(t, map[int32]string{7: "0::/kubepods/pod" + uid + "/" + cid + "\n"}))
	cfg.CacheTTL = -1
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := a.Attest(t.Context(), attest.Peer{PID: 7}); err != nil {
			t.Fatal(err)
		}
	}
	if n := k.requests.Load(); n != 3 {
		t.Errorf("kubelet got %d requests for 3 attestations without a cache, want 3", n)
	}
}

// TestRetry: a pod or container missing from a (cached) list is looked up
// again in a fresh list once, then refused.
func TestRetry(t *testing.T) {
	unknownPod := "0::/kubepods/pod99999999-8888-7777-6666-555555555555/" + cid + "\n"
	unknownContainer := "0::/kubepods/pod" + uid + "/" + strings.Repeat("f", 64) + "\n"
	known := "0::/kubepods/pod" + uid + "/" + cid + "\n"
	tests := []struct {
		name     string
		lists    []string
		cgroup   string
		want     error
		inMsg    string
		requests int32
	}{
		{name: "ok/pod-appears-on-retry", lists: []string{podListJSON(), podListJSON(webPod(uid, cid))}, cgroup: known, requests: 2},
		{name: "ok/container-appears-on-retry", lists: []string{podListJSON(webPod(uid, "")), podListJSON(webPod(uid, cid))}, cgroup: known, requests: 2},
		{name: "fail/no-pod", lists: []string{podListJSON(webPod(uid, cid))}, cgroup: unknownPod, want: attest.ErrNotAuthorized,
			inMsg: "no pod for pid 5: the kubelet has no pod 99999999-8888-7777-6666-555555555555", requests: 2},
		{name: "fail/no-container", lists: []string{podListJSON(webPod(uid, cid))}, cgroup: unknownContainer, want: attest.ErrNotAuthorized,
			inMsg: "pod shop/web-7d4b9c8f6-x2x9z has no container ffffffffffff", requests: 2},
		{name: "fail/pod-level-cgroup", lists: []string{podListJSON(webPod(uid, cid))}, cgroup: "0::/kubepods/pod" + uid + "\n",
			want: attest.ErrNotAuthorized, inMsg: "in none of its containers", requests: 0},
		{name: "fail/conflicting-cgroups", lists: []string{podListJSON(webPod(uid, cid))}, cgroup: known + "1:cpu:/kubepods/pod" + static + "/" + cid + "\n",
			want: attest.ErrNotAuthorized, inMsg: "different pods", requests: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKubelet(t, tt.lists...)
			a, err := New(k.config(t, fakeProc(t, map[int32]string{5: tt.cgroup})))
			if err != nil {
				t.Fatal(err)
			}
			sels, err := a.Attest(t.Context(), attest.Peer{PID: 5})
			if tt.want == nil {
				if err != nil || !slices.Equal(strs(sels), webSelectors) {
					t.Fatalf("Attest = %v, %v; want %v", strs(sels), err, webSelectors)
				}
			} else if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.inMsg) {
				t.Fatalf("Attest = %v, %v; want %v containing %q", sels, err, tt.want, tt.inMsg)
			}
			if n := k.requests.Load(); n != tt.requests {
				t.Errorf("kubelet got %d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestKubeletUnavailable(t *testing.T) {
	cgroup := map[int32]string{5: "0::/kubepods/pod" + uid + "/" + cid + "\n"}
	tests := []struct {
		name  string
		setup func(k *kubelet, cfg *Config)
		inMsg string
	}{
		{name: "fail/unreachable", setup: func(k *kubelet, cfg *Config) { k.srv.Close() }, inMsg: "kubelet request failed"},
		{name: "fail/wrong-token", setup: func(k *kubelet, cfg *Config) { os.WriteFile(cfg.TokenFile, []byte("nope"), 0o600) }, inMsg: "401 Unauthorized"},
		{name: "fail/no-token-file", setup: func(k *kubelet, cfg *Config) { cfg.TokenFile = filepath.Join(t.TempDir(), "missing") }, inMsg: "kubelet credentials"},
		{name: "fail/server-error", setup: func(k *kubelet, cfg *Config) { k.status = http.StatusInternalServerError }, inMsg: "500"},
		{name: "fail/untrusted-certificate", setup: func(k *kubelet, cfg *Config) { cfg.CAFile = "" }, inMsg: "certificate"},
		{name: "fail/not-json", setup: func(k *kubelet, cfg *Config) { k.lists = []string{"<html>"} }, inMsg: "pod list"},
		{name: "fail/too-large", setup: func(k *kubelet, cfg *Config) { cfg.MaxResponseSize = 10 }, inMsg: "larger than 10 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKubelet(t, podListJSON(webPod(uid, cid)))
			cfg := k.config(t, fakeProc(t, cgroup))
			tt.setup(k, &cfg)
			a, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Attest(t.Context(), attest.Peer{PID: 5})
			t.Log(err)
			if !errors.Is(err, attest.ErrUnavailable) || !strings.Contains(err.Error(), tt.inMsg) {
				t.Fatalf("Attest = %v; want ErrUnavailable containing %q", err, tt.inMsg)
			}
			if strings.Contains(err.Error(), bearer) {
				t.Errorf("error %q contains the kubelet token", err)
			}
		})
	}
}

func TestInsecureSkipVerify(t *testing.T) {
	k := newKubelet(t, podListJSON(webPod(uid, cid)))
	cfg := k.config(t, fakeProc(t, map[int32]string{5: "0::/kubepods/pod" + uid + "/" + cid + "\n"}))
	cfg.CAFile, cfg.InsecureSkipVerify = "", true
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sels, err := a.Attest(t.Context(), attest.Peer{PID: 5}); err != nil || !slices.Equal(strs(sels), webSelectors) {
		t.Fatalf("Attest = %v, %v", strs(sels), err)
	}
}

func TestProcessGone(t *testing.T) {
	k := newKubelet(t, podListJSON(webPod(uid, cid)))
	a, err := New(k.config(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attest(t.Context(), attest.Peer{PID: 5}); !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("Attest(missing pid) = %v, want ErrProcessChanged", err)
	}
	if _, err := a.Attest(t.Context(), attest.Peer{PID: 0}); !errors.Is(err, attest.ErrInvalidEvidence) {
		t.Fatalf("Attest(0) = %v, want ErrInvalidEvidence", err)
	}
}

func TestNew(t *testing.T) {
	pemFile := filepath.Join(t.TempDir(), "empty.pem")
	os.WriteFile(pemFile, []byte("not pem"), 0o644)
	for name, cfg := range map[string]Config{
		"fail/bad-scheme":        {KubeletURL: "ftp://127.0.0.1:10250"},
		"fail/no-host":           {KubeletURL: "https://"},
		"fail/ca-and-insecure":   {CAFile: pemFile, InsecureSkipVerify: true},
		"fail/missing-ca-file":   {CAFile: filepath.Join(t.TempDir(), "missing.pem")},
		"fail/ca-file-not-a-pem": {CAFile: pemFile},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if a.podsURL != DefaultKubeletURL+"/pods" || a.Name() != Name || a.ttl != DefaultCacheTTL || a.root != "/proc" {
		t.Errorf("defaults: %+v", a)
	}
}
