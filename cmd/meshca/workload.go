package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/wlapi"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// envWorkloadSocket is the SPIFFE standard variable naming the Workload API.
const envWorkloadSocket = "SPIFFE_ENDPOINT_SOCKET"

// agentSocketName is the Workload API socket's name in a data directory,
// where meshca dev and meshca agent put it by default.
const agentSocketName = "agent.sock"

func (a *app) newWorkloadCommand() *cobra.Command {
	return groupCommand("workload", "Workload-side helpers: the SPIFFE Workload API client",
		a.newWorkloadFetchCommand())
}

const workloadFetchLong = `fetch asks the SPIFFE Workload API of a meshca agent (or of meshca dev) for
this process's X509-SVIDs, as spire-agent api fetch x509 does, and writes the
default one (the first; or the one of --spiffe-id) into --out:
  svid.pem    the leaf, then the intermediates (mode 0644)
  key.pem     the leaf's private key, PKCS#8, made by the agent (mode 0600)
  bundle.pem  the roots of the trust domain for the SVID's profile (mode 0644)
--out is created (mode 0700) if needed; files already there are replaced.

The agent attests the calling process (its uid, gid, executable...) and
returns the SVIDs of every registration entry whose selectors it matches and
whose profile the client asks for. When there are several, all their SPIFFE
IDs are printed; --all also writes the others, as svid.N.pem, key.N.pem and
bundle.N.pem (N = 1, 2, ...). --spiffe-id ID picks the one written as
svid.pem.

The order is fixed, so the default SVID does not change from one call to the
next: ECDSA SVIDs before SM2 ones, then by SPIFFE ID, then the oldest entry
first.

Profiles: standard Workload API clients (go-spiffe, spire-agent, Envoy)
cannot parse SM2 certificates, so the agent serves SM2 SVIDs only to clients
that ask for them, with the gRPC request metadata
  ` + wlapi.ProfilesMetadataKey + `: sm2            (or ecdsa,sm2)
which --profile sends: --profile sm2 fetches the SM2 SVIDs only, --profile
ecdsa,sm2 both kinds. Without --profile, fetch asks for nothing and gets what
every standard client gets: the ECDSA SVIDs.

While the agent is starting, or has not been told about a matching entry yet,
fetch retries until --timeout.

The socket is --socket (a path or unix:///path), else $SPIFFE_ENDPOINT_SOCKET,
else agent.sock in the default data directory ($MESHCA_DATA_DIR, else
$XDG_DATA_HOME/meshca, else ~/.local/share/meshca), where "meshca dev" puts it.

Check the files with openssl: fetch prints the command, e.g.
  openssl verify -x509_strict -CAfile svid/bundle.pem -untrusted svid/svid.pem svid/svid.pem`

func (a *app) newWorkloadFetchCommand() *cobra.Command {
	var (
		socket, outDir, spiffeID string
		profiles                 []string
		timeout                  time.Duration
		all                      bool
	)
	cmd := &cobra.Command{
		Use:   "fetch --out DIR [--socket S] [--profile ecdsa|sm2|ecdsa,sm2] [--spiffe-id ID] [--timeout 30s] [--all]",
		Short: "Fetch this process's X509-SVIDs from the Workload API into files",
		Long:  workloadFetchLong,
		Example: `  meshca workload fetch --socket ~/.local/share/meshca/agent.sock --out ./svid
  SPIFFE_ENDPOINT_SOCKET=unix:///run/meshca/agent.sock meshca workload fetch --out /etc/app/svid
  meshca workload fetch --profile sm2 --spiffe-id spiffe://example.org/gm/api --out ./sm2`,
		Args: cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "the agent's Workload API socket, a path or unix:///path (default $"+envWorkloadSocket+", else <default data dir>/"+agentSocketName+")")
	f.StringVar(&outDir, "out", "", "directory to write svid.pem, key.pem and bundle.pem into (required)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	f.BoolVar(&all, "all", false, "also write every other SVID, as svid.N.pem, key.N.pem and bundle.N.pem")
	f.StringSliceVar(&profiles, "profile", nil, "profiles to ask for, ecdsa and/or sm2, comma-separated (default: none named, so ecdsa only, as for every standard client)")
	f.StringVar(&spiffeID, "spiffe-id", "", "write the SVID of this SPIFFE ID as svid.pem (default: the first, in the agent's order)")
	if err := cmd.MarkFlagRequired("out"); err != nil {
		panic(err) // the flag is declared just above
	}
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if timeout <= 0 {
			return usageErrorf("--timeout %s: want a positive duration", timeout)
		}
		for _, p := range profiles {
			if _, err := ca.ProfileByName(p); err != nil {
				return usageErrorf("--profile %q: want ecdsa, sm2 or ecdsa,sm2", p)
			}
		}
		if cmd.Flags().Changed("spiffe-id") {
			if _, err := spiffeid.FromString(spiffeID); err != nil {
				return usageErrorf("--spiffe-id %q: %v", spiffeID, err)
			}
		}
		out, err := absDir("--out", outDir)
		if err != nil {
			return err
		}
		path, err := a.workloadSocketPath(socket)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		svids, err := a.fetchX509SVIDs(ctx, path, profiles, timeout)
		if err != nil {
			return err
		}
		if spiffeID != "" {
			if svids, err = pickSVID(svids, spiffeID); err != nil {
				return err
			}
		}
		rep := fetchReport{Socket: path}
		for i, s := range svids {
			r := newFetchedSVIDReport(s)
			if i == 0 || all {
				files, err := writeFetchedSVID(s, out, i)
				if err != nil {
					return err
				}
				r.Files = &files
				r.Verify = fetchVerifyCommands(s.Leaf.Profile, files)
			}
			rep.SVIDs = append(rep.SVIDs, r)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, rep)
		}
		return a.printFetch(rep)
	})
	return cmd
}

// workloadSocketPath resolves the Workload API socket: flag (--socket),
// else $SPIFFE_ENDPOINT_SOCKET, else agent.sock in the default data
// directory. It accepts unix:///abs/path, unix:path and a plain path.
func (a *app) workloadSocketPath(flag string) (string, error) {
	addr, source := flag, "--socket"
	if addr == "" {
		addr, source = a.getenv(envWorkloadSocket), "$"+envWorkloadSocket
	}
	if addr == "" {
		dir, err := defaultDataDir(a.getenv)
		if err != nil {
			return "", fmt.Errorf("no Workload API socket: give --socket or $%s (%w)", envWorkloadSocket, err)
		}
		return filepath.Join(dir, agentSocketName), nil
	}
	path := addr
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path = strings.TrimPrefix(addr, "unix://")
		if !strings.HasPrefix(path, "/") {
			return "", usageErrorf("%s %q: want unix:///absolute/path (three slashes) or a path", source, addr)
		}
	case strings.HasPrefix(addr, "unix:"):
		path = strings.TrimPrefix(addr, "unix:")
	case strings.Contains(addr, "://"):
		return "", usageErrorf("%s %q: only Unix sockets are supported: want a path or unix:///path", source, addr)
	}
	if path == "" {
		return "", usageErrorf("%s %q: the socket path is empty", source, addr)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", source, addr, err)
	}
	return abs, nil
}

// pickSVID moves the SVID of id to the front of svids, the default
// written as svid.pem, keeping the others in order.
func pickSVID(svids []*wlapi.SVID, id string) ([]*wlapi.SVID, error) {
	if picked, ok := wlapi.Pick(svids, id); ok {
		return picked, nil
	}
	ids := make([]string, 0, len(svids))
	for _, s := range svids {
		ids = append(ids, s.ID+" ("+s.Leaf.Profile+")")
	}
	return nil, fmt.Errorf("the Workload API served this process no X509-SVID for --spiffe-id %s, only: %s (an SVID of another profile needs --profile)", id, strings.Join(ids, ", "))
}

// fetchX509SVIDs asks the Workload API on socket for the caller's
// X509-SVIDs of profiles (none named: what the agent serves every standard
// client), retrying until ctx ends (see wlapi.Client.FetchX509SVIDs), and
// explains a failure; timeout is ctx's limit, for messages.
func (a *app) fetchX509SVIDs(ctx context.Context, socket string, profiles []string, timeout time.Duration) ([]*wlapi.SVID, error) {
	if len(socket) > maxSocketPath {
		return nil, fmt.Errorf("Workload API socket path %s is %d bytes, longer than Unix sockets allow (%d)", socket, len(socket), maxSocketPath)
	}
	// A missing socket, or one with no agent behind it (left by a crash),
	// is said at once rather than waited for until the timeout.
	if err := checkAgentSocket(socket, "Workload API", timeout); err != nil {
		return nil, err
	}
	c, err := wlapi.New(wlapi.Config{Socket: socket, Profiles: profiles})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	svids, err := c.FetchX509SVIDs(ctx)
	if err != nil {
		return nil, a.fetchError(socket, timeout, err)
	}
	return svids, nil
}

// fetchError explains why fetching failed.
func (a *app) fetchError(socket string, timeout time.Duration, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("fetch X509-SVIDs from %s: %w", socket, err)
	}
	switch st.Code() {
	case codes.PermissionDenied:
		if strings.Contains(st.Message(), wlapi.ProfilesMetadataKey) {
			return codedErrorf(st.Code(), "the Workload API at %s issued this process no X509-SVID of the profiles asked for within %s (--timeout): %s; ask for them with --profile (e.g. --profile sm2)", socket, timeout, st.Message())
		}
		return codedErrorf(st.Code(), "the Workload API at %s issued no X509-SVID to this process within %s (--timeout): %s; is there a registration entry for it, e.g. with --selector unix:uid:%d, whose parent is this agent? (meshca entry list)", socket, timeout, st.Message(), a.uid)
	case codes.Unavailable:
		if strings.Contains(st.Message(), "dial unix") {
			return codedErrorf(st.Code(), "cannot reach the Workload API at %s within %s (--timeout): nothing is listening on it; is `meshca dev` or `meshca agent` running?", socket, timeout)
		}
		return codedErrorf(st.Code(), "the Workload API at %s is unavailable after %s (--timeout): %s", socket, timeout, st.Message())
	case codes.DeadlineExceeded:
		return codedErrorf(st.Code(), "the Workload API at %s sent no X509-SVID within %s (--timeout): the agent may not be attested or connected to a server yet; see its log", socket, timeout)
	case codes.Canceled:
		return codedErrorf(st.Code(), "fetch X509-SVIDs: cancelled")
	}
	return codedErrorf(st.Code(), "fetch X509-SVIDs from %s: %s", socket, st.Message())
}

// writeFetchedSVID writes s into dir: svid.pem, key.pem and bundle.pem for the
// first (n = 0), svid.n.pem, key.n.pem and bundle.n.pem for the others.
func writeFetchedSVID(s *wlapi.SVID, dir string, n int) (svidFiles, error) {
	name := func(base string) string {
		if n == 0 {
			return filepath.Join(dir, base+".pem")
		}
		return filepath.Join(dir, base+"."+strconv.Itoa(n)+".pem")
	}
	f := svidFiles{SVID: name("svid"), Key: name("key"), Bundle: name("bundle")}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: s.KeyDER})
	defer clear(keyPEM)
	if err := writeFiles(dir,
		outFile{f.Key, keyPEM, modePrivate},
		outFile{f.SVID, ca.EncodePEM(s.Chain...), modePublic},
		outFile{f.Bundle, ca.EncodePEM(s.Roots...), modePublic},
	); err != nil {
		return svidFiles{}, fmt.Errorf("write the X509-SVID of %s: %w", s.ID, err)
	}
	return f, nil
}

// fetchReport is what workload fetch prints.
type fetchReport struct {
	Socket string              `json:"socket"`
	SVIDs  []fetchedSVIDReport `json:"svids"`
}

// fetchedSVIDReport describes one fetched X509-SVID; Files and Verify are
// set for those written out.
type fetchedSVIDReport struct {
	SPIFFEID  string     `json:"spiffe_id"`
	Profile   string     `json:"profile"`
	Serial    string     `json:"serial"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	Files     *svidFiles `json:"files,omitempty"`
	Verify    []string   `json:"verify,omitempty"`
}

func newFetchedSVIDReport(s *wlapi.SVID) fetchedSVIDReport {
	return fetchedSVIDReport{
		SPIFFEID: s.ID, Profile: s.Leaf.Profile, Serial: fmt.Sprintf("%x", s.Leaf.SerialNumber),
		NotBefore: s.Leaf.NotBefore.UTC(), NotAfter: s.Leaf.NotAfter.UTC(),
	}
}

// fetchVerifyCommands are the openssl commands that verify written files.
// openssl verify checks the first certificate of its file argument, so
// svid.pem serves as the leaf and, with -untrusted, as the intermediates.
// OpenSSL 3 applies the SM2 distinguishing ID only at depth 0, so an SM2
// chain is verified one link at a time, the intermediates read from a pipe.
func fetchVerifyCommands(profile string, f svidFiles) []string {
	if profile == ca.ProfileSM2 {
		distid := "distid:" + ca.SM2SignerID
		intermediates := shellCommand("sed", "1,/END CERTIFICATE/d", f.SVID) + " | "
		return []string{
			intermediates + shellCommand("openssl", "verify", "-x509_strict", "-vfyopt", distid, "-CAfile", f.Bundle),
			intermediates + shellCommand("openssl", "verify", "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", "/dev/stdin", f.SVID),
		}
	}
	return []string{shellCommand("openssl", "verify", "-x509_strict", "-CAfile", f.Bundle, "-untrusted", f.SVID, f.SVID)}
}

func (a *app) printFetch(r fetchReport) error {
	if len(r.SVIDs) > 1 {
		fmt.Fprintf(a.stdout, "the Workload API at %s returned %d X509-SVIDs:\n", r.Socket, len(r.SVIDs))
		for i, s := range r.SVIDs {
			note := ""
			if i == 0 {
				note = " (the default)"
			}
			fmt.Fprintf(a.stdout, "  %d  %s  %s%s\n", i, s.SPIFFEID, s.Profile, note)
		}
		fmt.Fprintln(a.stdout)
	}
	first := true
	for _, s := range r.SVIDs {
		if s.Files == nil {
			continue
		}
		if !first {
			fmt.Fprintln(a.stdout)
		}
		first = false
		t := newTable(a.stdout, "")
		t.row("SPIFFE ID", s.SPIFFEID)
		t.row("profile", s.Profile)
		t.row("serial", s.Serial)
		t.row("not after", s.NotAfter.Format(time.RFC3339))
		t.row(filepath.Base(s.Files.SVID), s.Files.SVID+" (leaf, then intermediates)")
		t.row(filepath.Base(s.Files.Key), s.Files.Key+" (private key, PKCS#8, mode 0600)")
		t.row(filepath.Base(s.Files.Bundle), s.Files.Bundle+" (roots of the "+s.Profile+" profile)")
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, "verify with openssl:")
		for _, c := range s.Verify {
			fmt.Fprintf(a.stdout, "  %s\n", c)
		}
	}
	return nil
}

// checkAgentSocket says at once why socket cannot be the agent's (what
// names the API asked for) rather than after the timeout: too long a path,
// nothing there, not a socket, or a socket left by a crash with no agent
// behind it.
func checkAgentSocket(socket, what string, timeout time.Duration) error {
	if len(socket) > maxSocketPath {
		return usageErrorf("socket path %s is %d bytes, longer than Unix sockets allow (%d)", socket, len(socket), maxSocketPath)
	}
	err := wlapi.CheckSocket(socket)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, wlapi.ErrNoSocket):
		return codedErrorf(codes.Unavailable, "no %s socket at %s: is `meshca dev` or `meshca agent` running? Give its socket with --socket or $%s", what, socket, envWorkloadSocket)
	case errors.Is(err, wlapi.ErrNotSocket):
		return fmt.Errorf("%s is not a Unix socket: give the agent's %s socket with --socket", socket, what)
	case errors.Is(err, wlapi.ErrNotListening):
		return codedErrorf(codes.Unavailable, "cannot reach the %s at %s within %s (--timeout): nothing is listening on it; is `meshca dev` or `meshca agent` running?", what, socket, timeout)
	}
	return err
}
