package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/devmode"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// defaultTrustDomain is the trust domain of a data directory dev creates.
const defaultTrustDomain = "meshca.local"

// devStartTimeout bounds each step of dev's start: the server becoming
// ready, and the Workload API serving the caller's SVID.
const devStartTimeout = devmode.DefaultStartTimeout

const devLong = `dev runs a whole meshca trust domain in one process, for development: a
single-node CA server and a node agent that serves the SPIFFE Workload API on a
Unix socket, with a registration entry that gives you, the user running it, an
X509-SVID. It runs until SIGINT (Ctrl-C) or SIGTERM.

The first run bootstraps the trust domain (--trust-domain, default
meshca.local): ECDSA and SM2 roots, the server's intermediates and identity.
It then makes an agent join token through its own operator API, attests the
agent with it, and creates the entry
  SPIFFE ID  spiffe://<trust domain>/dev/uid/<your uid>
  parent     the agent's SPIFFE ID
  selector   unix:uid:<your uid>
  profile    ecdsa
Later runs reopen the data directory: the same roots, the same agent (it keeps
its own SVID), the same entries; the entry is created again only if missing.

Once the Workload API has served your SVID, dev prints where everything is
and what to try next, in another terminal:
  meshca workload fetch --socket <socket> --out ./svid
  openssl verify -x509_strict -CAfile svid/bundle.pem -untrusted svid/svid.pem svid/svid.pem
  meshca entry list --addr unix://<data-dir>/admin.sock
(in a checkout, "meshca" is "go run ./cmd/meshca").

The data directory is the first of:
  --data-dir D
  $MESHCA_DATA_DIR
  $XDG_DATA_HOME/meshca
  ~/.local/share/meshca

Files (directories 0700, private keys 0600):
  D/server/identity.json   the server's identity (keys sealed under the KEK)
  D/server/bundle.pem      the trust bundle (ECDSA roots), for other agents
  D/raft/...               the replicated state: entries, nodes, ledger
  D/agent/                 the agent's own SVID and key
  D/kek                    the KEK, when neither --kek-file nor $MESHCA_KEK_FILE is set
  D/admin.sock             the operator API (--admin-socket; mode 0600), while dev runs
  D/agent.sock             the Workload API (--socket), while dev runs

Unix socket paths are limited to about 100 bytes: with a long data directory,
give a short --socket and --admin-socket (dev names every path too long at
once).

The server listens on 127.0.0.1 with ports chosen at each start, unless
--raft-addr and --api-addr say otherwise; the agent is given the address.

Key-encryption key (KEK): --kek-file F or $MESHCA_KEK_FILE names an existing
file of 32 random bytes in base64, readable by its owner only, e.g.
  (umask 077; head -c 32 /dev/urandom | base64 > kek)
Without either, dev creates D/kek and warns that a KEK kept beside the keys it
protects is for development only. The data directory opens only with the KEK
it was created with.

Logs go to standard error at --log-level (default warn; info shows every
allow and deny decision). Join tokens and keys are never printed.

To mint a certificate offline without running anything, see "meshca x509 mint".`

// devOptions are dev's flags.
type devOptions struct {
	dataDir, socket, adminSocket string
	trustDomain, kekFile         string
	raftAddr, apiAddr            string
	logLevel, logFormat          string
}

// devReport is what dev prints once it runs.
type devReport struct {
	DataDir      string  `json:"data_dir"`
	TrustDomain  string  `json:"trust_domain"`
	Bootstrapped bool    `json:"bootstrapped"`
	KEK          kekInfo `json:"kek"`
	Server       struct {
		NodeID      string `json:"node_id"`
		RaftAddr    string `json:"raft_addr"`
		APIAddr     string `json:"api_addr"`
		AdminSocket string `json:"admin_socket"`
		TrustBundle string `json:"trust_bundle"`
	} `json:"server"`
	Agent struct {
		SPIFFEID string `json:"spiffe_id"`
		// Attestation is "join_token" when this run attested the agent,
		// "stored" when it had its identity already.
		Attestation string `json:"attestation"`
		Socket      string `json:"socket"`
	} `json:"agent"`
	Entry        entryReport       `json:"entry"`
	EntryCreated bool              `json:"entry_created"`
	SVID         fetchedSVIDReport `json:"svid"`
	Next         []string          `json:"next"`
}

func (a *app) newDevCommand() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev [--data-dir D] [--socket S] [--admin-socket S] [--trust-domain TD] [--kek-file F] [--raft-addr H:P] [--api-addr H:P]",
		Short: "Run a single-node server and agent, with an X509-SVID for you",
		Long:  devLong,
		Args:  cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "data directory (default $MESHCA_DATA_DIR, else $XDG_DATA_HOME/meshca, else ~/.local/share/meshca)")
	f.StringVar(&o.socket, "socket", "", "Unix socket of the Workload API (default <data-dir>/"+agentSocketName+")")
	f.StringVar(&o.adminSocket, "admin-socket", "", "Unix socket of the operator API (default <data-dir>/"+server.AdminSocketName+")")
	f.StringVar(&o.trustDomain, "trust-domain", defaultTrustDomain, "trust domain of a new data directory; if given when reopening, it must match")
	f.StringVar(&o.kekFile, "kek-file", "", "key-encryption key file (default $MESHCA_KEK_FILE, else <data-dir>/kek, for development only)")
	f.StringVar(&o.raftAddr, "raft-addr", "127.0.0.1:0", "host:port Raft listens on (port 0: any free port)")
	f.StringVar(&o.apiAddr, "api-addr", "127.0.0.1:0", "host:port of the server's API, which the agent dials (port 0: any free port)")
	f.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "", "log format: text or json (default text, json with --output json)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		var td spiffeid.TrustDomain
		if cmd.Flags().Changed("trust-domain") {
			var err error
			if td, err = spiffeid.TrustDomainFromString(o.trustDomain); err != nil {
				return usageErrorf("--trust-domain %q: %v", o.trustDomain, err)
			}
		}
		if o.logFormat == "" {
			o.logFormat = a.defaultLogFormat()
		}
		return a.dev(cmd.Context(), o, td)
	})
	return cmd
}

// checkDevOptions refuses options that cannot work, before anything is
// created: these are usage errors.
func checkDevOptions(o *devOptions) error {
	for _, ad := range []struct{ flag, value string }{{"--raft-addr", o.raftAddr}, {"--api-addr", o.apiAddr}} {
		if host, _, err := net.SplitHostPort(ad.value); err != nil || host == "" {
			return usageErrorf("%s %q: want host:port, e.g. 127.0.0.1:0", ad.flag, ad.value)
		}
	}
	if _, err := parseLogLevel(o.logLevel); err != nil {
		return err
	}
	return checkLogFormat(o.logFormat)
}

// dev runs the server and the agent until ctx ends or the process gets
// SIGINT or SIGTERM. td is the trust domain asked for, or zero.
func (a *app) dev(ctx context.Context, o devOptions, td spiffeid.TrustDomain) error {
	if err := checkDevOptions(&o); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	dataDir, err := a.dataDirOr(o.dataDir)
	if err != nil {
		return err
	}
	socket, adminSocket, err := devSocketPaths(o, dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, modeDir); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	hasIdentity, err := server.HasIdentity(dataDir)
	if err != nil {
		return err
	}
	// A new data directory gets td, or meshca.local; an existing one keeps
	// its trust domain, which a td given must match.
	tdName := td.Name()
	if !hasIdentity && td.IsZero() {
		tdName = defaultTrustDomain
	}
	kek, kekFrom, err := a.serverKEK(serverConfig{KEKFile: o.kekFile, Bootstrap: true}, dataDir, hasIdentity, true)
	if err != nil {
		return err
	}

	log, raftLog := a.loggers(o.logLevel, o.logFormat)
	if level, _ := parseLogLevel(o.logLevel); level > slog.LevelDebug {
		// A single server's Raft warns at every start that it holds an
		// election, which is normal here.
		raftLog.SetLevel(hclog.Error)
	}
	wattestors, err := workloadAttestors(log, &agentConfig{})
	if err != nil {
		return err
	}
	// A second signal, once dev is stopping, kills the process the default way.
	context.AfterFunc(ctx, stop)
	err = devmode.Run(ctx, devmode.Config{
		DataDir: dataDir, Socket: socket, AdminSocket: adminSocket, RaftAddr: o.raftAddr, APIAddr: o.apiAddr,
		KEK: kek, Bootstrap: !hasIdentity, TrustDomain: tdName, UID: a.uid, WorkloadAttestors: wattestors,
		Logger: log, RaftLogger: raftLog, StartTimeout: devStartTimeout,
	}, func(r devmode.Report) error {
		return a.printDev(newDevReport(r, kekFrom))
	})
	switch {
	case errors.Is(err, ca.ErrWrongKEK):
		return fmt.Errorf("the key-encryption key %s does not open the data directory %s; use the one it was created with: %w", kekFrom.File, dataDir, err)
	case errors.Is(err, devmode.ErrStopped):
		return fmt.Errorf("meshca dev: %w", err)
	}
	return err
}

// newDevReport is what dev prints about r.
func newDevReport(r devmode.Report, kek kekInfo) devReport {
	rep := devReport{DataDir: r.DataDir, TrustDomain: r.TrustDomain.Name(), Bootstrapped: r.Bootstrapped, KEK: kek,
		Entry: newEntryReport(r.Entry), EntryCreated: r.EntryCreated, SVID: newFetchedSVIDReport(r.SVID)}
	rep.Server.NodeID, rep.Server.RaftAddr, rep.Server.APIAddr = r.NodeID, r.RaftAddr, r.APIAddr
	rep.Server.AdminSocket, rep.Server.TrustBundle = r.AdminSocket, r.TrustBundlePath
	rep.Agent.SPIFFEID, rep.Agent.Attestation, rep.Agent.Socket = r.AgentID, r.AgentAttestation, r.Socket
	admin := "unix://" + r.AdminSocket
	rep.Next = []string{
		shellCommand("meshca", "workload", "fetch", "--socket", r.Socket, "--out", "./svid"),
		shellCommand("openssl", "verify", "-x509_strict", "-CAfile", "svid/bundle.pem", "-untrusted", "svid/svid.pem", "svid/svid.pem"),
		shellCommand("meshca", "sds", "fetch", "--socket", r.Socket, "--out", "./sds"),
		shellCommand("meshca", "entry", "list", "--addr", admin),
		shellCommand("meshca", "node", "list", "--addr", admin),
	}
	return rep
}

// devSocketPaths returns dev's Workload API and admin socket paths, made
// absolute, refusing at once every one too long for a Unix socket.
func devSocketPaths(o devOptions, dataDir string) (socket, admin string, err error) {
	socket, admin = filepath.Join(dataDir, agentSocketName), server.DefaultAdminSocket(dataDir)
	for _, p := range []struct {
		flag string
		path *string
	}{{o.socket, &socket}, {o.adminSocket, &admin}} {
		if p.flag != "" {
			if *p.path, err = filepath.Abs(p.flag); err != nil {
				return "", "", fmt.Errorf("socket %s: %w", p.flag, err)
			}
		}
	}
	var long []string
	for _, p := range []struct{ what, flag, path string }{{"Workload API", "--socket", socket}, {"admin", "--admin-socket", admin}} {
		if len(p.path) > maxSocketPath {
			long = append(long, fmt.Sprintf("the %s socket path %s is %d bytes (give a shorter %s)", p.what, p.path, len(p.path), p.flag))
		}
	}
	if len(long) > 0 {
		return "", "", usageErrorf("Unix socket paths are limited to %d bytes: %s; or give a shorter --data-dir", maxSocketPath, strings.Join(long, "; "))
	}
	return socket, admin, nil
}

func (a *app) printDev(r devReport) error {
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	fmt.Fprintf(a.stdout, "meshca dev is running: a server and an agent for trust domain %s. Ctrl-C stops it.\n\n", r.TrustDomain)
	td := r.TrustDomain + " (reopened)"
	if r.Bootstrapped {
		td = r.TrustDomain + " (created now: ecdsa and sm2 roots, valid 10 years)"
	}
	kek := fmt.Sprintf("%s (id %s)", r.KEK.File, r.KEK.ID)
	if r.KEK.Source == "data-dir" {
		kek += ", in the data directory: development only"
	}
	attested := "its stored identity"
	if r.Agent.Attestation == jointoken.Name {
		attested = "attested now with a join token"
	}
	entry := "existing"
	if r.EntryCreated {
		entry = "created now"
	}
	t := newTable(a.stdout, "")
	t.row("data dir", r.DataDir)
	t.row("trust domain", td)
	t.row("KEK", kek)
	t.row("server API", r.Server.APIAddr+" (node "+r.Server.NodeID+")")
	t.row("admin socket", r.Server.AdminSocket+" (operator commands: --addr unix://"+r.Server.AdminSocket+")")
	t.row("trust bundle", r.Server.TrustBundle)
	t.row("agent", r.Agent.SPIFFEID+" ("+attested+")")
	t.row("Workload API", r.Agent.Socket)
	t.row("entry", fmt.Sprintf("%s gives %s to %s (%s)", r.Entry.ID, r.Entry.SPIFFEID, joinSelectors(r.Entry.Selectors), entry))
	t.row("your SVID", fmt.Sprintf("%s, %s, serial %s, expires %s (renewed at half-life)", r.SVID.SPIFFEID, r.SVID.Profile, r.SVID.Serial, r.SVID.NotAfter.Format(time.RFC3339)))
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "\nNext, in another terminal (in a checkout, meshca is \"go run ./cmd/meshca\"):\n")
	for _, c := range r.Next {
		fmt.Fprintf(a.stdout, "  %s\n", c)
	}
	return nil
}
