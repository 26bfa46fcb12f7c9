package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"sort"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// reloadable are the server settings SIGHUP applies without a restart: the
// log level, and the node attestors' trust material (their files are read
// again even when their names did not change, e.g. a rotated JWKS).
var reloadable = map[string]bool{
	"log_level": true, "x509pop_ca": true, "k8s_psat_cluster": true, "k8s_psat_issuer": true, "k8s_psat_jwks": true,
	"k8s_psat_audience": true, "k8s_psat_allowed_sa": true, "k8s_psat_clusters": true,
}

// serverReloader applies SIGHUP to a running server.
type serverReloader struct {
	load    func() (serverConfig, error) // the config file again, with the command line's flags
	current serverConfig
	srv     *server.Server
	level   *slog.LevelVar
	raftLog hclog.Logger
	log     *slog.Logger
}

// watch reloads at every SIGHUP until ctx ends.
func (r *serverReloader) watch(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload()
		}
	}
}

// reload reads the configuration again and applies what can change while
// the server runs. A configuration that does not load or check changes
// nothing; settings that need a restart are named.
func (r *serverReloader) reload() {
	c, err := r.load()
	if err == nil {
		err = checkServerConfig(&c)
	}
	if err != nil {
		r.log.Error("SIGHUP: the configuration was not reloaded; nothing changed", "err", err)
		return
	}
	files, err := loadNodeAttestorFiles(&c)
	if err != nil {
		r.log.Error("SIGHUP: the node attestors' files were not reloaded; nothing changed", "err", err)
		return
	}
	roots, err := server.ParseTrustBundle("of the server", r.srv.TrustBundle())
	if err != nil {
		r.log.Error("SIGHUP: the server's trust bundle", "err", err)
		return
	}
	td, err := ca.TrustDomainOfRoots(roots)
	if err != nil {
		r.log.Error("SIGHUP: the server's trust domain", "err", err)
		return
	}
	attestors, err := files.attestors(td)
	if err != nil {
		r.log.Error("SIGHUP: the node attestors were not reloaded; nothing changed", "err", err)
		return
	}
	level, _ := parseLogLevel(c.LogLevel) // checked
	r.srv.SetNodeAttestors(attestors)
	r.level.Set(level)
	r.raftLog.SetLevel(raftLevel(level))
	names := []string{jointoken.Name}
	for _, a := range attestors {
		names = append(names, a.Name())
	}
	r.log.Info("SIGHUP: configuration reloaded", "log_level", c.LogLevel, "node_attestors", names,
		"k8s_psat_clusters", len(files.clusters), "x509pop_cas", len(files.x509popRoots))
	if keys := restartOnly(r.current, c); len(keys) > 0 {
		r.log.Warn("SIGHUP: these settings changed but apply only after a restart", "keys", keys)
	}
	for k := range reloadable {
		setKey(&r.current, &c, k)
	}
}

// restartOnly lists the config keys whose values differ between a and b
// and that SIGHUP does not apply.
func restartOnly(a, b serverConfig) []string {
	ma, mb := configMap(a), configMap(b)
	var keys []string
	for k, v := range mb {
		if !reloadable[k] && !reflect.DeepEqual(ma[k], v) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func configMap(c serverConfig) map[string]any {
	b, _ := json.Marshal(c)
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

// setKey copies the field of key from src to dst.
func setKey(dst, src *serverConfig, key string) {
	dv, sv := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	for i := range dv.NumField() {
		if dv.Type().Field(i).Tag.Get("json") == key {
			dv.Field(i).Set(sv.Field(i))
		}
	}
}
