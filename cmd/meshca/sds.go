package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emmansun/gmsm/smx509"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/sdsclient"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func (a *app) newSDSCommand() *cobra.Command {
	return groupCommand("sds", "Envoy SDS helpers: see what a proxy gets from the agent",
		a.newSDSFetchCommand())
}

const sdsFetchLong = `fetch asks a meshca agent's Envoy Secret Discovery Service (SDS v3, on the
same socket as the Workload API) for named secrets the way an Envoy does,
and writes what it receives as PEM files into --out, so that you can see
and check what a proxy of this process would get.

Names (--name, repeatable or comma-separated; default: default,ROOTCA):
  default              this process's certificate and key (its first ECDSA
                       SVID; an SM2-only workload's first SM2 SVID)
  ROOTCA               the trust domain's roots and the CRL of every CA
  spiffe://<td>/<path> the certificate and key of that SPIFFE ID
  spiffe://<td>        that trust domain's roots and CRLs
  ALL                  every bundle, as Envoy's SPIFFE certificate validator
  <name>~sm2           the SM2 variant of any of these (GM-capable proxies)
The names "default", "ROOTCA" and "ALL" are the agent's defaults (its
sds.default_svid_name, sds.default_bundle_name, sds.all_bundles_name).

The agent attests the calling process (SO_PEERCRED, then its workload
attestors) and serves only the identities its entries give it: a name the
process may not have gets no secret, and the agent audits the refusal.
While the agent has no certificate for it yet (starting, or the entry is
new), fetch retries until --timeout.

Files, named after each secret (characters a file name cannot hold become
"_"): <name>.cert.pem (chain, leaf first, 0644) and <name>.key.pem (PKCS#8,
0600) for a certificate; <name>.bundle.pem (roots) and <name>.crl.pem (CRLs)
for a validation context; <name>.<trust domain>.bundle.pem for each trust
domain of a SPIFFE validator. --out is created (mode 0700) if needed; files
already there are replaced.

--fetch uses the unary FetchSecrets call instead of a stream (the same
secrets). The socket is --socket, else $SPIFFE_ENDPOINT_SOCKET, else
agent.sock in the default data directory.`

func (a *app) newSDSFetchCommand() *cobra.Command {
	var (
		socket, outDir string
		names          []string
		timeout        time.Duration
		unary          bool
	)
	cmd := &cobra.Command{
		Use:   "fetch --out DIR [--socket S] [--name default,ROOTCA] [--fetch] [--timeout 30s]",
		Short: "Fetch Envoy SDS secrets from the agent into PEM files, as a proxy would get them",
		Long:  sdsFetchLong,
		Example: `  meshca sds fetch --socket /run/meshca/agent.sock --out ./sds
  meshca sds fetch --name spiffe://example.org/ns/prod/sa/api --name spiffe://example.org --out ./sds
  meshca sds fetch --name default~sm2,ROOTCA~sm2 --out ./sm2`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "the agent's socket, a path or unix:///path (default $"+envWorkloadSocket+", else <default data dir>/"+agentSocketName+")")
	f.StringVar(&outDir, "out", "", "directory to write the PEM files into (required)")
	f.StringSliceVar(&names, "name", []string{sds.DefaultSVIDName, sds.DefaultBundleName}, "secret names to ask for")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	f.BoolVar(&unary, "fetch", false, "use FetchSecrets (one call) instead of a stream")
	if err := cmd.MarkFlagRequired("out"); err != nil {
		panic(err) // declared just above
	}
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if timeout <= 0 {
			return usageErrorf("--timeout %s: want a positive duration", timeout)
		}
		if len(names) == 0 {
			return usageErrorf("--name: give at least one secret name")
		}
		for _, n := range names { // any name: the agent's defaults are configurable
			if n == "" || len(n) > sds.MaxNameBytes {
				return usageErrorf("--name %q: want a name of 1 to %d bytes", n, sds.MaxNameBytes)
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
		if err := checkAgentSocket(path, "agent", timeout); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		resp, err := fetchSDS(ctx, path, names, unary)
		if err != nil {
			return sdsFetchError(path, timeout, names, err)
		}
		rep, files, err := sdsReport(path, out, resp)
		if err != nil {
			return err
		}
		if err := writeFiles(out, files...); err != nil {
			return err
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, rep)
		}
		return a.printSDSFetch(rep)
	})
	return cmd
}

// fetchSDS gets names, retrying while the agent is unavailable or has not
// got every name for this process yet, until ctx ends.
func fetchSDS(ctx context.Context, socket string, names []string, unary bool) (*sdsclient.Response, error) {
	c, err := sdsclient.Dial(socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var missing error // the last answer that lacked names, reported at the end
	backoff := 100 * time.Millisecond
	for {
		var resp *sdsclient.Response
		if unary {
			resp, err = c.Fetch(ctx, names...)
		} else {
			resp, err = c.Stream(ctx, names...)
		}
		var m *sdsclient.MissingError
		switch {
		case err == nil:
			return resp, nil
		case errors.As(err, &m):
			missing = err
		case status.Code(err) != codes.Unavailable && ctx.Err() == nil:
			return nil, err
		}
		select {
		case <-ctx.Done():
			if missing != nil {
				return nil, missing
			}
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func sdsFetchError(socket string, timeout time.Duration, names []string, err error) error {
	var missing *sdsclient.MissingError
	if errors.As(err, &missing) {
		return codedErrorf(codes.PermissionDenied, "the agent at %s served no secret for %s within %s (--timeout): this process may not have it (is there a registration entry for it under this agent, e.g. with --selector unix:uid:%d? The agent's audit log records the refusal), or its certificate is not issued yet",
			socket, strings.Join(missing.Names, ", "), timeout, os.Getuid())
	}
	switch st, _ := status.FromError(err); st.Code() {
	case codes.DeadlineExceeded:
		return codedErrorf(codes.DeadlineExceeded, "the agent at %s sent nothing for %s within %s (--timeout): it may not be attested or connected to a server yet; see its log", socket, strings.Join(names, ", "), timeout)
	case codes.Unavailable:
		return codedErrorf(codes.Unavailable, "cannot reach the agent's SDS at %s within %s (--timeout): %s", socket, timeout, st.Message())
	case codes.InvalidArgument:
		return codedErrorf(codes.InvalidArgument, "the agent at %s refused the request: %s", socket, st.Message())
	}
	return fmt.Errorf("SDS fetch from %s: %w", socket, err)
}

// pemBlocks decodes the DER of every PEM block in b.
func pemBlocks(b []byte) ([][]byte, error) {
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		out = append(out, block.Bytes)
	}
	if len(out) == 0 && len(b) > 0 {
		return nil, errors.New("no PEM block")
	}
	return out, nil
}

// sdsFetchReport is what `meshca sds fetch` prints.
type sdsFetchReport struct {
	Socket      string            `json:"socket"`
	VersionInfo string            `json:"version_info"`
	Secrets     []sdsSecretReport `json:"secrets"`
	Verify      []string          `json:"verify,omitempty"`
}

type sdsSecretReport struct {
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	SPIFFEID  string   `json:"spiffe_id,omitempty"`
	Profile   string   `json:"profile,omitempty"`
	NotAfter  string   `json:"not_after,omitempty"`
	Roots     int      `json:"roots,omitempty"`
	CRLs      int      `json:"crls,omitempty"`
	Validator string   `json:"validator,omitempty"`
	Files     []string `json:"files"`
}

// sdsReport describes the secrets and lists the files to write for them.
func sdsReport(socket, out string, resp *sdsclient.Response) (sdsFetchReport, []outFile, error) {
	rep := sdsFetchReport{Socket: socket, VersionInfo: resp.VersionInfo}
	var files []outFile
	paths := map[string]string{} // file suffix of a name -> path, for the openssl hint
	for _, sec := range resp.Secrets {
		fs, err := sdsclient.Files(sec)
		if err != nil {
			return rep, nil, err
		}
		r := sdsSecretReport{Name: sec.GetName()}
		for _, f := range fs {
			mode := modePublic
			if f.Secret {
				mode = modePrivate
			}
			p := filepath.Join(out, f.Name)
			files = append(files, outFile{path: p, data: f.Data, mode: mode})
			r.Files = append(r.Files, p)
			paths[sec.GetName()+"/"+strings.TrimPrefix(f.Name, sdsclient.FileName(sec.GetName()))] = p
		}
		switch t := sec.GetType().(type) {
		case *tlsv3.Secret_TlsCertificate:
			r.Type = "tls_certificate"
			if ders, err := pemBlocks(t.TlsCertificate.GetCertificateChain().GetInlineBytes()); err == nil && len(ders) > 0 {
				if c, err := smx509.ParseCertificate(ders[0]); err == nil {
					r.NotAfter = c.NotAfter.UTC().Format(time.RFC3339)
					r.Profile = ca.ProfileECDSA
					if c.SignatureAlgorithm == smx509.SM2WithSM3 {
						r.Profile = ca.ProfileSM2
					}
					if len(c.URIs) == 1 {
						r.SPIFFEID = c.URIs[0].String()
					}
				}
			}
		case *tlsv3.Secret_ValidationContext:
			r.Type = "validation_context"
			vc := t.ValidationContext
			roots, _ := pemBlocks(vc.GetTrustedCa().GetInlineBytes())
			crls, _ := pemBlocks(vc.GetCrl().GetInlineBytes())
			r.Roots, r.CRLs = len(roots), len(crls)
			if cv := vc.GetCustomValidatorConfig(); cv != nil {
				r.Validator = cv.GetName()
			}
		case *tlsv3.Secret_GenericSecret:
			r.Type = "generic_secret"
		}
		rep.Secrets = append(rep.Secrets, r)
	}
	rep.Verify = sdsVerifyCommands(rep, paths)
	return rep, files, nil
}

// sdsVerifyCommands is the openssl command that checks an ECDSA
// certificate against a validation context fetched with it, with the
// CRLs of every CA when it has them.
func sdsVerifyCommands(rep sdsFetchReport, paths map[string]string) []string {
	var cert, bundle string
	for _, s := range rep.Secrets {
		switch {
		case s.Type == "tls_certificate" && s.Profile == ca.ProfileECDSA && cert == "":
			cert = s.Name
		case s.Type == "validation_context" && s.Validator == "" && bundle == "" && !strings.HasSuffix(s.Name, sds.ProfileSeparator+sds.ProfileSM2):
			bundle = s.Name
		}
	}
	if cert == "" || bundle == "" {
		return nil
	}
	chain := paths[cert+"/.cert.pem"]
	args := []string{"openssl", "verify", "-x509_strict", "-CAfile", paths[bundle+"/.bundle.pem"], "-untrusted", chain}
	if crl := paths[bundle+"/.crl.pem"]; crl != "" {
		args = append(args, "-crl_check_all", "-CRLfile", crl)
	}
	return []string{shellCommand(append(args, chain)...)}
}

func (a *app) printSDSFetch(r sdsFetchReport) error {
	fmt.Fprintf(a.stdout, "the agent's SDS at %s served %d secrets (version %s):\n", r.Socket, len(r.Secrets), r.VersionInfo)
	for _, s := range r.Secrets {
		fmt.Fprintln(a.stdout)
		t := newTable(a.stdout, "  ")
		t.row("name", s.Name)
		t.row("type", s.Type)
		if s.SPIFFEID != "" {
			t.row("spiffe id", s.SPIFFEID)
			t.row("profile", s.Profile)
			t.row("not after", s.NotAfter)
		}
		if s.Type == "validation_context" {
			t.row("roots", s.Roots)
			t.row("crls", s.CRLs)
			if s.Validator != "" {
				t.row("validator", s.Validator)
			}
		}
		for i, f := range s.Files {
			label := ""
			if i == 0 {
				label = "files"
			}
			t.row(label, f)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if len(r.Verify) > 0 {
		fmt.Fprintln(a.stdout, "\ncheck them with:")
		for _, c := range r.Verify {
			fmt.Fprintln(a.stdout, "  "+c)
		}
	}
	return nil
}
