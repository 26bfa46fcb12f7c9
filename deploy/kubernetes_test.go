package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest/k8spsat"
	"github.com/meshca/meshca/internal/entryfile"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// manifests is one kustomization, built as `kubectl apply -k` builds it,
// every object decoded strictly into its k8s.io/api type.
type manifests struct {
	namespaces   map[string]*corev1.Namespace
	accounts     map[string]*corev1.ServiceAccount
	configMaps   map[string]*corev1.ConfigMap
	services     map[string]*corev1.Service
	statefulSets map[string]*appsv1.StatefulSet
	daemonSets   map[string]*appsv1.DaemonSet
	deployments  map[string]*appsv1.Deployment
	pdbs         map[string]*policyv1.PodDisruptionBudget
}

// decodeStrict decodes a YAML object into v, refusing unknown fields (a
// misspelt key would be dropped by the API server without a word).
func decodeStrict(t *testing.T, where string, b []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
}

// build runs kustomize on dir and decodes what it produces; every file the
// kustomization lists is also decoded on its own, so that a typo in a
// source file is named there.
func build(t *testing.T, dir string) *manifests {
	t.Helper()
	kb, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k types.Kustomization
	decodeStrict(t, dir+"/kustomization.yaml", kb, &k)
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			t.Fatalf("%s lists %s: %v", dir, r, err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			decodeObject(t, fmt.Sprintf("%s/%s, document %d", dir, r, i+1), doc, &manifests{})
		}
	}
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := &manifests{}
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		decodeObject(t, dir+": "+r.GetKind()+" "+r.GetName(), b, m)
	}
	return m
}

func decodeObject(t *testing.T, where string, b []byte, m *manifests) {
	t.Helper()
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(b, &meta); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	switch want := meta.APIVersion + " " + meta.Kind; want {
	case "v1 Namespace":
		o := &corev1.Namespace{}
		decodeStrict(t, where, b, o)
		set(&m.namespaces, o.Name, o)
	case "v1 ServiceAccount":
		o := &corev1.ServiceAccount{}
		decodeStrict(t, where, b, o)
		set(&m.accounts, o.Name, o)
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		decodeStrict(t, where, b, o)
		set(&m.configMaps, o.Name, o)
	case "v1 Service":
		o := &corev1.Service{}
		decodeStrict(t, where, b, o)
		set(&m.services, o.Name, o)
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		decodeStrict(t, where, b, o)
		set(&m.statefulSets, o.Name, o)
	case "apps/v1 DaemonSet":
		o := &appsv1.DaemonSet{}
		decodeStrict(t, where, b, o)
		set(&m.daemonSets, o.Name, o)
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		decodeStrict(t, where, b, o)
		set(&m.deployments, o.Name, o)
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		decodeStrict(t, where, b, o)
		set(&m.pdbs, o.Name, o)
	default:
		t.Fatalf("%s: %s is not a kind this test knows; decode it too", where, want)
	}
}

func set[T any](m *map[string]T, name string, v T) {
	if *m == nil {
		*m = map[string]T{}
	}
	(*m)[name] = v
}

func must[T any](t *testing.T, m map[string]T, name string) T {
	t.Helper()
	v, ok := m[name]
	if !ok {
		t.Fatalf("no %T named %s", v, name)
	}
	return v
}

// jsonConfig decodes a configuration file carried by a ConfigMap (the
// keys' meaning is checked by meshca's own loader in cmd/meshca).
func jsonConfig(t *testing.T, cm *corev1.ConfigMap, key string) map[string]any {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal([]byte(cm.Data[key]), &c); err != nil {
		t.Fatalf("ConfigMap %s, %s: %v", cm.Name, key, err)
	}
	return c
}

func containerPort(t *testing.T, c *corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %s", c.Name, name)
	return 0
}

// mountOf returns the volume mounted at the directory holding file (or at
// file itself), and its mount; a volume that is not one of the pod's has
// only its name (a StatefulSet's claim).
func mountOf(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, file string) (*corev1.Volume, corev1.VolumeMount) {
	t.Helper()
	var best corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if (file == m.MountPath || strings.HasPrefix(file, m.MountPath+"/")) && len(m.MountPath) > len(best.MountPath) {
			best = m
		}
	}
	if best.Name == "" {
		t.Fatalf("container %s: nothing is mounted where %s is", c.Name, file)
	}
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == best.Name {
			return &spec.Volumes[i], best
		}
	}
	// A StatefulSet's volume claim template, which the caller checks by name.
	return &corev1.Volume{Name: best.Name}, best
}

func args(c *corev1.Container) map[string]string {
	out := map[string]string{}
	for _, a := range c.Args {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "--") {
			out[strings.TrimPrefix(k, "--")] = v
		}
	}
	return out
}

func port(t *testing.T, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return p
}

// The kustomization builds, every object decodes with the k8s.io/api
// types, and the pieces fit: the servers' StatefulSet starts three pods at
// once whose shared configuration names pod 0 as the bootstrap node and
// its stable DNS name as the join address; ports, files and sockets are
// where the configurations, probes and Services expect them, and where
// meshca's defaults are; the agents attest with the projected token the
// servers' k8s_psat settings accept.
func TestKubernetesManifests(t *testing.T) {
	m := build(t, "kubernetes")
	ns := must(t, m.namespaces, "meshca")

	// Servers.
	sts := must(t, m.statefulSets, "meshca")
	spec := &sts.Spec.Template.Spec
	if *sts.Spec.Replicas != 3 || sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("StatefulSet: %d replicas, %s pod management; want 3 started in parallel", *sts.Spec.Replicas, sts.Spec.PodManagementPolicy)
	}
	peers := must(t, m.services, sts.Spec.ServiceName)
	if peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: want headless and publishing not-ready pods (servers find each other before they are ready)", peers.Name)
	}
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("StatefulSet: no pod anti-affinity")
	}
	pdb := must(t, m.pdbs, "meshca")
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || !labelsMatch(pdb.Spec.Selector.MatchLabels, sts.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget: %+v, want at most 1 server of the StatefulSet down", pdb.Spec)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("StatefulSet: %d volume claim templates, want 1", len(sts.Spec.VolumeClaimTemplates))
	}
	srv := &spec.Containers[0]
	cfgVol, cfgMount := mountOf(t, spec, srv, args(srv)["config"])
	cm := must(t, m.configMaps, cfgVol.ConfigMap.Name)
	sc := jsonConfig(t, cm, path.Base(args(srv)["config"]))
	if cfgMount.MountPath != path.Dir(args(srv)["config"]) {
		t.Errorf("--config %s is not in the ConfigMap's mount %s", args(srv)["config"], cfgMount.MountPath)
	}
	if v, _ := mountOf(t, spec, srv, sc["data_dir"].(string)); v.Name != sts.Spec.VolumeClaimTemplates[0].Name {
		t.Errorf("data_dir %s is on volume %s, not the PersistentVolumeClaim", sc["data_dir"], v.Name)
	}
	for key, secret := range map[string]string{"kek_file": "meshca-kek", "server_join_secret_file": "meshca-server-join"} {
		file := sc[key].(string)
		v, _ := mountOf(t, spec, srv, file)
		if v.Secret == nil || v.Secret.SecretName != secret || *v.Secret.DefaultMode != 0o400 {
			t.Errorf("%s %s: volume %+v, want Secret %s mounted mode 0400", key, file, v.VolumeSource, secret)
		} else if v.Secret.Items == nil && path.Base(file) != map[string]string{"kek_file": "kek", "server_join_secret_file": "secret"}[key] {
			t.Errorf("%s %s: not a key of Secret %s as deploy/README.md creates it", key, file, secret)
		}
	}
	a := args(srv)
	podDNS := "$(POD_NAME)." + peers.Name + ".$(POD_NAMESPACE).svc"
	if a["node-id"] != "$(POD_NAME)" || a["raft-addr"] != podDNS+":"+port(t, sc["raft_bind"].(string)) || a["api-addr"] != podDNS+":"+port(t, sc["api_bind"].(string)) {
		t.Errorf("server args %v: want the pod's name as node ID and its stable DNS name %s, on the bind ports, as addresses", srv.Args, podDNS)
	}
	for _, name := range []string{"raft", "api"} {
		p := fmt.Sprint(containerPort(t, srv, name))
		if p != port(t, sc[name+"_bind"].(string)) {
			t.Errorf("container port %s %s differs from %s_bind %s", name, p, name, sc[name+"_bind"])
		}
		found := false
		for _, sp := range peers.Spec.Ports {
			found = found || sp.TargetPort.String() == name && fmt.Sprint(sp.Port) == p
		}
		if !found {
			t.Errorf("Service %s does not expose %s on %s", peers.Name, name, p)
		}
	}
	if port(t, a["http-addr"]) != fmt.Sprint(containerPort(t, srv, "http")) || !strings.HasPrefix(a["http-addr"], "$(POD_IP):") {
		t.Errorf("--http-addr %s: want the pod IP and the http port (the probes')", a["http-addr"])
	}
	checkProbes(t, srv)
	bootstrap := sc["bootstrap_node"].(string)
	if bootstrap != sts.Name+"-0" || sc["join"] != bootstrap+"."+peers.Name+"."+ns.Name+".svc:"+port(t, sc["api_bind"].(string)) {
		t.Errorf("bootstrap_node %v, join %v: want pod 0 bootstrapping and the others joining its stable name", bootstrap, sc["join"])
	}
	// k8s_psat: the JWKS is mounted; the agents' service account is allowed.
	clusters := sc["k8s_psat_clusters"].([]any)
	psat := clusters[0].(map[string]any)
	if v, _ := mountOf(t, spec, srv, psat["jwks_file"].(string)); v.ConfigMap == nil {
		t.Errorf("jwks_file %s is not from a ConfigMap", psat["jwks_file"])
	}
	if psat["audience"] != nil && psat["audience"] != k8spsat.DefaultAudience {
		t.Errorf("k8s_psat audience %v", psat["audience"])
	}

	// Agents.
	ds := must(t, m.daemonSets, "meshca-agent")
	aspec := &ds.Spec.Template.Spec
	if !aspec.HostPID || !aspec.HostNetwork || aspec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("DaemonSet: hostPID %v, hostNetwork %v, dnsPolicy %s: the agent needs the host's PIDs, the kubelet on 127.0.0.1 and cluster DNS", aspec.HostPID, aspec.HostNetwork, aspec.DNSPolicy)
	}
	ag := &aspec.Containers[0]
	agVol, _ := mountOf(t, aspec, ag, args(ag)["config"])
	ac := jsonConfig(t, must(t, m.configMaps, agVol.ConfigMap.Name), path.Base(args(ag)["config"]))
	sock := ac["socket"].(string)
	sockVol, sockMount := mountOf(t, aspec, ag, sock)
	if sockVol.HostPath == nil || sockVol.HostPath.Path != sockMount.MountPath || path.Base(sock) != "agent.sock" {
		t.Errorf("agent socket %s: volume %+v; want agent.sock in a host directory mounted at the same path", sock, sockVol.VolumeSource)
	}
	if sock != "/run/meshca/agent.sock" {
		t.Errorf("agent socket %s, want /run/meshca/agent.sock (the Envoy examples')", sock)
	}
	tokVol, tokMount := mountOf(t, aspec, ag, k8spsat.DefaultTokenPath)
	if tokVol.Projected == nil || len(tokVol.Projected.Sources) != 1 || tokVol.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("no projected service account token at %s", k8spsat.DefaultTokenPath)
	}
	tok := tokVol.Projected.Sources[0].ServiceAccountToken
	if path.Join(tokMount.MountPath, tok.Path) != k8spsat.DefaultTokenPath || tok.Audience != k8spsat.DefaultAudience {
		t.Errorf("projected token at %s for audience %q, want %s for %q (the agent's and servers' defaults)", path.Join(tokMount.MountPath, tok.Path), tok.Audience, k8spsat.DefaultTokenPath, k8spsat.DefaultAudience)
	}
	if ac["k8s_psat_cluster"] != psat["name"] {
		t.Errorf("agent's k8s_psat_cluster %v, servers know %v", ac["k8s_psat_cluster"], psat["name"])
	}
	allowed := psat["allowed_service_accounts"].([]any)
	if !slices.Contains(allowed, any(ns.Name+":"+aspec.ServiceAccountName)) {
		t.Errorf("servers allow %v, the agents run as %s:%s", allowed, ns.Name, aspec.ServiceAccountName)
	}
	var servers []string
	for i := range int(*sts.Spec.Replicas) {
		servers = append(servers, fmt.Sprintf("%s-%d.%s.%s.svc:%s", sts.Name, i, peers.Name, ns.Name, port(t, sc["api_bind"].(string))))
	}
	if got := fmt.Sprint(ac["server"]); got != fmt.Sprint(servers) {
		t.Errorf("agent servers %s, want every server's stable name %v", got, servers)
	}
	if v, _ := mountOf(t, aspec, ag, ac["trust_bundle"].(string)); v.ConfigMap == nil || v.ConfigMap.Name != "meshca-bundle" {
		t.Errorf("trust_bundle %s is not from the ConfigMap meshca-bundle", ac["trust_bundle"])
	}
	if u := ac["k8s_kubelet_url"].(string); !strings.HasPrefix(u, "http://127.0.0.1:10255") {
		t.Errorf("kubelet URL %s: want the read-only endpoint on the host network", u)
	}
	if port(t, args(ag)["http-addr"]) != fmt.Sprint(containerPort(t, ag, "http")) {
		t.Errorf("agent --http-addr %s differs from its http port", args(ag)["http-addr"])
	}
	checkProbes(t, ag)

	// Minimal RBAC: no token mounted anywhere, no Role.
	for _, sa := range m.accounts {
		if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("ServiceAccount %s mounts a token", sa.Name)
		}
	}
	for _, c := range []*corev1.Container{srv, ag} {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Errorf("container %s: security context %+v, want no privilege escalation, a read-only root and no capability", c.Name, sc)
		}
	}
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// checkProbes: liveness and startup on /healthz, readiness on /readyz, all
// on the container's http port.
func checkProbes(t *testing.T, c *corev1.Container) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("container %s: %s probe %+v, want GET %s on port http", c.Name, p.name, p.probe, p.path)
		}
	}
}

// The Envoy sidecar example builds, decodes, and is wired to the agent:
// its pod mounts the agent's host socket directory where the Envoy
// bootstrap (which decodes with go-control-plane's types; see
// TestEnvoyBootstraps) dials it.
func TestKubernetesEnvoySidecar(t *testing.T) {
	agentSocketDir := "/run/meshca"
	m := build(t, "kubernetes/examples/envoy-sidecar")
	d := must(t, m.deployments, "web")
	spec := &d.Spec.Template.Spec
	var envoy *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "envoy" {
			envoy = &spec.Containers[i]
		}
	}
	if envoy == nil {
		t.Fatal("no envoy container")
	}
	cfgVol, cfgMount := mountOf(t, spec, envoy, "/etc/envoy/envoy.yaml")
	if !slices.Contains(envoy.Args, path.Join(cfgMount.MountPath, "envoy.yaml")) {
		t.Errorf("envoy args %v do not load the mounted bootstrap", envoy.Args)
	}
	var cm *corev1.ConfigMap
	for name, c := range m.configMaps {
		if name == cfgVol.ConfigMap.Name { // the generator's name, with its hash
			cm = c
		}
	}
	if cm == nil {
		t.Fatalf("no ConfigMap %s", cfgVol.ConfigMap.Name)
	}
	file, err := os.ReadFile("kubernetes/examples/envoy-sidecar/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["envoy.yaml"] != string(file) {
		t.Error("the ConfigMap does not carry envoy.yaml as it is")
	}
	b := loadBootstrap(t, "kubernetes/examples/envoy-sidecar/envoy.yaml")
	checkAgentCluster(t, b, "meshca_agent")
	sockVol, sockMount := mountOf(t, spec, envoy, agentSocketDir+"/agent.sock")
	if sockVol.HostPath == nil || sockVol.HostPath.Path != agentSocketDir || sockMount.MountPath != agentSocketDir {
		t.Errorf("the sidecar mounts %+v at %s, want the agent's host directory %s", sockVol.VolumeSource, sockMount.MountPath, agentSocketDir)
	}
	svc := must(t, m.services, "web")
	if svc.Spec.Ports[0].TargetPort.String() != "https" || containerPort(t, envoy, "https") != 8443 {
		t.Errorf("Service web does not reach Envoy's inbound listener on 8443")
	}
	if b.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress().GetPortValue() != 8443 {
		t.Error("Envoy's inbound listener is not on 8443")
	}
}

// The example's entries file loads as meshca entry create --file reads
// it, and gives the sidecar's pods (their namespace and service account)
// the SPIFFE ID its Envoy bootstrap presents, under k8s_psat agents of the
// cluster the servers know.
func TestKubernetesExampleEntries(t *testing.T) {
	f, err := os.Open("kubernetes/examples/envoy-sidecar/entries.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	es, err := entryfile.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	m := build(t, "kubernetes/examples/envoy-sidecar")
	d := must(t, m.deployments, "web")
	ns := must(t, m.namespaces, "demo")
	for i, e := range es {
		sel := map[string]bool{}
		for _, s := range e.Selectors {
			sel[s.Type+":"+s.Value] = true
		}
		if len(sel) != 2 || !sel["k8s:ns:"+ns.Name] || !sel["k8s:sa:"+d.Spec.Template.Spec.ServiceAccountName] {
			t.Errorf("entry %d selects %v, not the pods of service account %s in %s", i, sel, d.Spec.Template.Spec.ServiceAccountName, ns.Name)
		}
		if !strings.HasPrefix(e.ParentId, "spiffe://example.org/meshca/agent/k8s_psat/demo-cluster/") || e.SpiffeId != "spiffe://example.org/ns/demo/sa/web" {
			t.Errorf("entry %d: %s under %s", i, e.SpiffeId, e.ParentId)
		}
	}
}
