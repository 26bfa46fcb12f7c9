package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// writeJoinSecret writes a server-join secret file of the given secrets
// (base64 lines, the first presented by joining servers), mode 0600.
func writeJoinSecret(t *testing.T, path string, secrets ...string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(strings.Join(secrets, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func newJoinSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// startupProc is a server of a cluster started the way deployments start
// one: the one shared configuration file, each server its own node ID and
// addresses; it advertises its addresses by name ("localhost", as a pod
// its stable DNS name) and listens on 127.0.0.1.
func startupProc(base, name string, raftPort, apiPort string) *serverProc {
	p := &serverProc{name: name, dataDir: filepath.Join(base, name), raftAddr: "localhost:" + raftPort, apiAddr: "localhost:" + apiPort,
		logPath: filepath.Join(base, name+".log")}
	p.sock = filepath.Join(p.dataDir, server.AdminSocketName)
	return p
}

func (p *serverProc) startShared(t *testing.T, bin, kek, config string, extra ...string) {
	t.Helper()
	_, raftPort, _ := net.SplitHostPort(p.raftAddr)
	_, apiPort, _ := net.SplitHostPort(p.apiAddr)
	p.start(t, bin, kek, append([]string{"--config", config, "--raft-bind", "127.0.0.1:" + raftPort, "--api-bind", "127.0.0.1:" + apiPort}, extra...)...)
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// TestClusterStartsTogether starts three servers at the same instant with
// one shared configuration, deploy/kubernetes's, as its StatefulSet with
// parallel pod management (or three systemd units) does: bootstrap_node names the one that
// bootstraps, the others join it with the pre-shared server-join secret
// and no trust bundle; they form one cluster with one leader and three
// voters, with no step in between. Then: a server killed and started again
// with the same settings (a replaced pod that kept its volume) is back
// without joining again; a server with a revoked or foreign secret is
// refused at once; a rotated-in secret admits a new server; a server that
// lost its data joins again once the operator removed its old membership.
func TestClusterStartsTogether(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five server processes")
	}
	t.Parallel()
	bin := meshcaBinary(t)
	base := shortTempDir(t)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	oldSecret, newSecret := newJoinSecret(t), newJoinSecret(t)
	secretFile := filepath.Join(base, "server-join-secret")
	writeJoinSecret(t, secretFile, oldSecret)

	ports := freePorts(t, 10)
	var procs []*serverProc
	for i := range 5 {
		procs = append(procs, startupProc(base, "meshca-"+string(rune('0'+i)), port(ports[2*i]), port(ports[2*i+1])))
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for _, p := range procs {
				if b, err := os.ReadFile(p.logPath); err == nil {
					t.Logf("log of %s:\n%s", p.name, b)
				}
			}
		}
	})
	// The configuration every server shares: the StatefulSet's ConfigMap,
	// with what differs on one host made local (the join address, the
	// files of the Secrets and the JWKS ConfigMap); each server's node ID
	// and advertised names come from flags, as the pods' args give them.
	var shared map[string]any
	if err := json.Unmarshal(readFile(t, k8sConfigFile(t, base, "server-config.yaml", "server.json")), &shared); err != nil {
		t.Fatal(err)
	}
	if shared["bootstrap_node"] != procs[0].name {
		t.Fatalf("the ConfigMap bootstraps %v, the test's first server is %s", shared["bootstrap_node"], procs[0].name)
	}
	shared["join"] = procs[0].apiAddr
	shared["server_join_secret_file"] = secretFile
	shared["kek_file"] = kek
	shared["join_timeout"] = "2m"
	delete(shared, "data_dir") // per server, a flag here (the pods' volumes)
	delete(shared, "raft_bind")
	delete(shared, "api_bind")
	shared["k8s_psat_clusters"].([]any)[0].(map[string]any)["jwks_file"] = newTestIssuer(t, base).jwksFile
	sharedJSON, err := json.Marshal(shared)
	if err != nil {
		t.Fatal(err)
	}
	config := writeTestFile(t, base, "server.json", sharedJSON)

	// All three at once.
	start := time.Now()
	for _, p := range procs[:3] {
		p.startShared(t, bin, kek, config)
	}
	members := procs[:3]
	waitFor(t, 90*time.Second, "three servers started together form one cluster", func() (bool, string) {
		leaders := map[string]bool{}
		for _, p := range members {
			peers, msg := binPeers(t, bin, p)
			if voters(peers) != 3 {
				return false, p.name + ": " + msg
			}
			for _, pr := range peers {
				if pr.Leader {
					leaders[pr.ID] = true
				}
			}
		}
		return len(leaders) == 1, "leaders seen: " + strings.Join(keysOf(leaders), ",")
	})
	t.Logf("three servers started together formed a cluster in %s", time.Since(start).Round(time.Millisecond))
	waitSameState(t, bin, 30*time.Second, members...)
	for _, p := range members {
		b := readFile(t, p.logPath)
		if p.name == "meshca-0" {
			if !bytes.Contains(b, []byte(`"mode":"bootstrap"`)) {
				t.Errorf("meshca-0 did not bootstrap:\n%s", b)
			}
			continue
		}
		if !bytes.Contains(b, []byte(`"mode":"join `+procs[0].apiAddr+`"`)) || !bytes.Contains(b, []byte("joined the cluster")) {
			t.Errorf("%s did not join meshca-0:\n%s", p.name, b)
		}
		if bytes.Contains(b, []byte(oldSecret)) {
			t.Errorf("%s logged the server-join secret", p.name)
		}
	}
	// The cluster records the addresses as advertised, by name.
	peers, _ := binPeers(t, bin, procs[0])
	for _, pr := range peers {
		if !strings.HasPrefix(pr.Address, "localhost:") {
			t.Errorf("peer %s recorded at %s, want its advertised name", pr.ID, pr.Address)
		}
	}

	// A replaced pod that kept its volume: killed, started again with the
	// same settings; it is back as the same voter, without joining again.
	procs[1].kill()
	procs[1].startShared(t, bin, kek, config)
	waitSameState(t, bin, 60*time.Second, members...)
	if peers, msg := binPeers(t, bin, procs[1]); voters(peers) != 3 {
		t.Fatalf("after meshca-1's restart: %s", msg)
	}
	if b := readFile(t, procs[1].logPath); bytes.Count(b, []byte("joined the cluster")) != 1 || !bytes.Contains(b, []byte(`"mode":"restart"`)) {
		t.Errorf("meshca-1 joined again after its restart:\n%s", b)
	}

	// A server holding a secret the members do not admit is refused at
	// once (no retrying until the join timeout), and changes nothing.
	p3 := procs[3]
	other := filepath.Join(base, "other-secret")
	writeJoinSecret(t, other, newSecret)
	p3.startShared(t, bin, kek, config, "--server-join-secret-file", other)
	select {
	case <-p3.done:
	case <-time.After(60 * time.Second):
		t.Fatal("a server with a secret the cluster does not admit kept trying")
	}
	if b := readFile(t, p3.logPath); p3.exitErr == nil || !bytes.Contains(b, []byte("server-join proof does not verify")) {
		t.Fatalf("meshca-3 with a foreign secret: exit %v\n%s", p3.exitErr, b)
	}
	if peers, msg := binPeers(t, bin, procs[0]); len(peers) != 3 {
		t.Fatalf("a refused join changed the peers: %s", msg)
	}

	// Rotation: the members admit the new secret beside the old (read at
	// each join, no restart); the new server presents it and is admitted.
	writeJoinSecret(t, secretFile, oldSecret, newSecret)
	os.RemoveAll(p3.dataDir)
	p3.startShared(t, bin, kek, config, "--server-join-secret-file", other)
	members = procs[:4]
	waitFor(t, 90*time.Second, "the server with the rotated-in secret joins", func() (bool, string) {
		peers, msg := binPeers(t, bin, procs[0])
		return voters(peers) == 4, msg
	})
	// Revocation of the old secret: a server presenting it is refused.
	writeJoinSecret(t, secretFile, newSecret)
	p4 := procs[4]
	old := filepath.Join(base, "old-secret")
	writeJoinSecret(t, old, oldSecret)
	p4.startShared(t, bin, kek, config, "--server-join-secret-file", old)
	select {
	case <-p4.done:
	case <-time.After(60 * time.Second):
		t.Fatal("a server with a revoked secret kept trying")
	}
	if b := readFile(t, p4.logPath); p4.exitErr == nil || !bytes.Contains(b, []byte("server-join proof does not verify")) {
		t.Fatalf("meshca-4 with the revoked secret: exit %v\n%s", p4.exitErr, b)
	}
	waitSameState(t, bin, 30*time.Second, members...)

	// A replaced pod that lost its volume: removed from the cluster by the
	// operator, it starts empty with the same settings and joins again by
	// secret (now the rotated one), under its old name.
	p2 := procs[2]
	p2.kill()
	mustRunBin(t, bin, "operator", "raft", "remove-peer", p2.name, "--addr", procs[0].addr())
	if err := os.RemoveAll(p2.dataDir); err != nil {
		t.Fatal(err)
	}
	p2.startShared(t, bin, kek, config)
	waitFor(t, 90*time.Second, "the server that lost its data joins again", func() (bool, string) {
		peers, msg := binPeers(t, bin, procs[0])
		return voters(peers) == 4 && slices.ContainsFunc(peers, func(p peerReport) bool { return p.ID == p2.name }), msg
	})
	waitSameState(t, bin, 60*time.Second, members...)
}

func keysOf(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
