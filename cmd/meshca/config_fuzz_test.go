package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzLoadConfig feeds arbitrary bytes to the server and agent config
// loaders (--config): they never panic; what they refuse is a usage error
// (a clear message, exit code 2); what they accept survives a round trip
// through JSON unchanged, so no setting is silently dropped or altered.
func FuzzLoadConfig(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"trust_domain": "example.org", "bootstrap": true, "node_id": "s1", "data_dir": "d"}`,
		`{"server": ["10.0.0.1:8443"], "trust_bundle": "b.pem", "join_token": "t", "renew_fraction": 0.5}`,
		`{"x509pop_ca": ["ca.pem"], "k8s_psat_clusters": [{"name": "c", "jwks_file": "j.json"}]}`,
		`{"bogus_key": 1}`,
		`{"server": "not a list"}`,
		`{} {}`,
		`[1, 2]`,
		`null`,
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "config.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		checkLoader(t, path, loadServerConfig)
		checkLoader(t, path, loadAgentConfig)
	})
}

func checkLoader[T any](t *testing.T, path string, load func(string) (T, error)) {
	t.Helper()
	c, err := load(path)
	if err != nil {
		var u *usageError
		if !errors.As(err, &u) {
			t.Fatalf("%T: refused with a %T, not a usage error: %v", c, err, err)
		}
		return
	}
	again, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("%T: accepted a config that does not marshal: %v", c, err)
	}
	if err := os.WriteFile(path, again, 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := load(path)
	if err != nil {
		t.Fatalf("%T: its own re-encoding %s is refused: %v", c, again, err)
	}
	if !reflect.DeepEqual(c, c2) {
		t.Fatalf("%T: round trip changed the config:\n%+v\n%+v", c, c, c2)
	}
}
